"""
The private directories of wrapped programs' moved sockets.

In private mode the rebind shim turns a wrapped program's TCP listening
socket into a Unix socket inside a directory that only the router's user
can enter (mode 0700): another local user cannot connect to the program
past the router, which a loopback port would allow.  The router makes one
such directory per program run by this module and removes it, with every
socket in it, once the program has stopped.  It imports nothing from
Twisted.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from contextlib import suppress
from pathlib import Path

from wsrouter.rebind import ShimUnavailable

__all__ = ["PrivateDirError", "clear_sockets", "make_private_dir", "remove_private_dir"]

#: Room a socket name in the directory needs ("m-65535-<pid>-<n>.sock" and
#: the slash), as rebind.c reserves it; sun_path holds 107 bytes.
_NAME_ROOM = 41
_SUN_PATH_MAX = 107
#: Characters the shim's report line allows in a path.
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class PrivateDirError(ShimUnavailable):
    """No private directory could be made; the message says what to change (a program cannot be wrapped)."""


def _candidates() -> list[str | None]:
    """Where to make the directory: $XDG_RUNTIME_DIR (if it is ours and private), then the system temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    places: list[str | None] = []
    if os.path.isabs(runtime) and _is_private(runtime):
        places.append(runtime)
    places.append(None)  # tempfile's choice: $TMPDIR, /tmp, ...
    return places


def _is_private(path: str) -> bool:
    """An existing directory owned by this user that nobody else can enter or change."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077 == 0


def make_private_dir(name: str) -> str:
    """
    Make a new directory, mode 0700, for the sockets of the program C{name}
    and return its absolute path (short enough for a Unix socket name
    inside it; only C{[A-Za-z0-9._/-]} characters, as the shim's report
    line needs).

    @raise PrivateDirError: no such directory can be made.
    """
    prefix = "wsrouter-" + _SAFE.sub("_", name)[:24] + "-"
    problems = []
    for parent in _candidates():
        try:
            path = os.path.realpath(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError as e:
            problems.append(f"{parent or tempfile.gettempdir()}: {e.strerror}")
            continue
        if len(path) + _NAME_ROOM <= _SUN_PATH_MAX and not _SAFE.search(path.replace("/", "")) and _is_private(path):
            return path
        os.rmdir(path)
        problems.append(f"{path}: too long or unusual a path for a Unix socket")
    raise PrivateDirError(
        f"cannot make a private socket directory for wrapped program {name} ({'; '.join(problems)}): "
        "set TMPDIR or XDG_RUNTIME_DIR to a short private directory, or use socket = \"loopback\""
    )


def clear_sockets(path: str) -> None:
    """Remove the socket files in the directory (a run that ended leaves them); the directory stays."""
    with suppress(FileNotFoundError):
        for entry in Path(path).iterdir():
            if entry.is_socket():
                with suppress(FileNotFoundError):
                    entry.unlink()


def remove_private_dir(path: str) -> None:
    """Remove the directory and everything in it; a directory already gone is fine."""
    with suppress(FileNotFoundError):
        shutil.rmtree(path)
