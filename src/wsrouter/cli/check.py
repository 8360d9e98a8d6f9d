"""
C{wsrouter check FILE}: validate a configuration file without starting
anything, and print it normalised (every default written out) as TOML.
"""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.python import usage

from wsrouter.config import ConfigError, RouterConfig, load_config, to_data
from wsrouter.config.emit import dumps
from wsrouter.process.sandbox import sandbox_problems
from wsrouter.resolvers import check_resolvers


class CheckOptions(usage.Options):
    synopsis = "Usage: wsrouter check FILE"
    longdesc = ("Check a wsrouter configuration file (TOML). Prints the configuration with every default "
                "filled in and exits 0, or lists every problem as FILE: key.path: problem and exits 1. "
                "The sandboxes and resolvers are checked as at start-up (users, cwd, the shim readable by their "
                "user; token sources, templates); other "
                "checks that need the file system (does the web root exist?) are made when the router starts.")

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def parseOptions(self, options: list[str] | None = None) -> None:
        super().parseOptions(options)  # type: ignore[no-untyped-call]

    def parseArgs(self, path: str) -> None:  # type: ignore[override]
        self["path"] = path


def machine_checks(config: RouterConfig, source: str) -> None:
    """
    The start-up checks C{check} makes too, so a file check passes only
    when serve would start: the sandboxes (a C{cwd} that is not there, a
    user the router cannot switch to), as docs/sandbox.md says, and the
    resolvers' sources (a template that makes no target, a token file that
    is not there).

    @raise ConfigError: listing them.
    """
    problems = [*sandbox_problems(config), *check_resolvers(config)]
    if problems:
        raise ConfigError(problems, source)


def main_check(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """
    Run C{wsrouter check} with C{argv} (the arguments after C{check}).

    @return: 0 for a good file, 1 for a file with problems, 2 for a bad
        command line.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    options = CheckOptions()
    try:
        options.parseOptions(argv)
    except SystemExit as e:  # --help prints and exits 0
        return int(e.code or 0)
    except usage.UsageError as e:
        err.write(f"wsrouter check: {e}\nusage: wsrouter check FILE\n")
        return 2
    try:
        config = load_config(options["path"], {})
        machine_checks(config, options["path"])
    except ConfigError as e:
        err.write(str(e) + "\n")
        return 1
    out.write(dumps(to_data(config)))
    return 0
