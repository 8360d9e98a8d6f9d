"""
The C{wsrouter} command: C{serve} (the default), C{check}, C{reload},
C{replay} and C{record-convert}, through C{twisted.python.usage}.

C{wsrouter ARGS} without a subcommand name is C{wsrouter serve ARGS}, so
websockify's C{wsrouter 8080 host:5900} keeps working.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.python import usage

from wsrouter import __version__

USAGE_HINT = "(wsrouter --help lists the commands, wsrouter serve --help the options)"


class _Passthrough(usage.Options):
    """A subcommand with its own argument parser: keeps its arguments as given."""

    def parseOptions(self, options: list[str] | None = None) -> None:
        self["argv"] = list(options or ())


class CheckOptions(_Passthrough):
    synopsis = "FILE"
    longdesc = "Validate a config file: print it normalised, or list every problem."


class ReplayOptions(_Passthrough):
    synopsis = "FILE [--realtime [--speed F]] [--dump-limit N | --full]"
    longdesc = "Print or play back a recorded session."


class ConvertOptions(_Passthrough):
    synopsis = "IN OUT [--force]"
    longdesc = "Convert a recording (websockify's --record files among them) to wsrouter's format."


def _serve_options() -> usage.Options:
    from wsrouter.cli.tap import ServeOptions

    return ServeOptions()


def _reload_options() -> usage.Options:
    from wsrouter.cli.reload import ReloadOptions

    return ReloadOptions()  # type: ignore[no-untyped-call]


class MainOptions(usage.Options):
    synopsis = "Usage: wsrouter"
    longdesc = ("wsrouter [serve] [options] | check FILE | reload | replay FILE | record-convert IN OUT. "
                "Without a command, the arguments are serve's (wsrouter serve --help lists them).")
    subCommands = [
        ["serve", None, _serve_options, "Run the router (the default command)."],
        ["check", None, CheckOptions, "Validate a config file."],
        ["reload", None, _reload_options, "Make the running router re-read its config (SIGHUP)."],
        ["replay", None, ReplayOptions, "Print or play back a recorded session."],
        ["record-convert", None, ConvertOptions, "Convert a recording between formats."],
    ]

    def opt_version(self) -> None:
        """Print wsrouter's version and exit."""
        print(f"wsrouter {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("give a command")


COMMANDS = ("serve", "check", "reload", "replay", "record-convert")


def with_command(argv: list[str]) -> list[str]:
    """Put C{serve} in front unless the command line names a command or asks for help/version."""
    if argv and (argv[0] in COMMANDS or argv[0] in ("--help", "-h", "--version", "--help-commands")):
        return argv
    return ["serve", *argv]


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    args = with_command(given)
    command = args[0] if args and args[0] in COMMANDS else None
    typed = command if given[:1] == [command] else None
    if command in ("check", "replay", "record-convert"):
        # Their own parsers do help and errors.
        return _TOOLS[command](args[1:])
    options = MainOptions()  # type: ignore[no-untyped-call]
    try:
        options.parseOptions(args)  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        print(f"wsrouter{' ' + typed if typed else ''}: {e}\n{USAGE_HINT}", file=sys.stderr)
        return 2
    if options.subCommand == "reload":
        from wsrouter.cli.reload import main_reload

        return main_reload(list(args[1:]))
    return serve(options.subOptions)


def _check(argv: list[str]) -> int:
    from wsrouter.cli.check import main_check  # type: ignore[import-not-found,import-untyped,unused-ignore]

    status: int = main_check(argv)
    return status


def _replay(argv: list[str]) -> int:
    from wsrouter.cli.replay import main_replay

    return main_replay(argv)


def _convert(argv: list[str]) -> int:
    from wsrouter.cli.replay import main_convert

    return main_convert(argv)


_TOOLS: dict[str, Callable[[list[str]], int]] = {"check": _check, "replay": _replay, "record-convert": _convert}


def start_logging(options: Any) -> None:
    """stderr or --log-file; info and up, debug with --verbose/--traffic; text or JSON lines (--log-format)."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
    )

    settings = options["config"].log
    # The log file stays open for the life of the process.
    stream = open(settings.file, "a", buffering=1) if settings.file else sys.stderr  # noqa: SIM115
    predicate = LogLevelFilterPredicate(LogLevel.debug if settings.level == "debug" else LogLevel.info)
    if settings.format == "json":
        from wsrouter.ops.logformat import JsonLinesObserver
        lines: Any = JsonLinesObserver(stream)
    else:
        from wsrouter.ops.logformat import text_logger
        lines = text_logger(stream, LogLevel.debug if settings.level == "debug" else LogLevel.info)
    observer: Any = FilteringLogObserver(lines, [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def serve(options: Any) -> int:
    """Run the router until SIGINT/SIGTERM (or a lifetime rule); returns the exit status."""
    from wsrouter.cli.reload import pidfile_path, remove_pidfile, write_pidfile
    from wsrouter.cli.tap import global_reactor, makeService
    from wsrouter.reactor import install_default
    from wsrouter.service.single import CannotStart

    install_default()
    try:
        start_logging(options)
    except OSError as e:
        print(f"wsrouter: --log-file: cannot open {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        service = makeService(options)
    except SystemExit as e:  # start-up checks failed; the problems are printed
        return int(e.code or 0)
    try:
        service.startService()
    except CannotStart as e:
        print(f"wsrouter: cannot start: {e}", file=sys.stderr)
        return 1
    pidfile = pidfile_path(options.get("config-file"))
    try:
        write_pidfile(pidfile)
    except OSError as e:
        print(f"wsrouter: cannot write the pid file {pidfile} ({e.strerror}); wsrouter reload will not find "
              "this router", file=sys.stderr)
    reactor = global_reactor()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    try:
        reactor.run()
    finally:
        remove_pidfile(pidfile)
    return getattr(service, "exit_status", None) or 0


if __name__ == "__main__":
    sys.exit(main())
