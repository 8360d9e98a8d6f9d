"""
`wsrouter` (and `python -m wsrouter`): the twistd plugin's service in the
foreground, for people who do not use twistd, plus the tool subcommands.
"""

from __future__ import annotations

import sys

from twisted.python import usage


def serve(argv: list[str]) -> int:
    """Run the router until SIGINT/SIGTERM; returns the exit status."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from wsrouter.cli.tap import Options, makeService

    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"wsrouter: {e}\n(wsrouter --help lists the options)", file=sys.stderr)
        return 2
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    service = makeService(options)
    try:
        service.startService()
    except Exception as e:  # a listener that cannot bind, mostly
        print(f"wsrouter: cannot start: {e}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return getattr(service, "exit_status", 0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "replay":
        from wsrouter.cli.replay import main_replay

        return main_replay(args[1:])
    if args and args[0] == "record-convert":
        from wsrouter.cli.replay import main_convert

        return main_convert(args[1:])
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
