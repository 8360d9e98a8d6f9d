"""
websockify's local token plugins, with its file formats.

  - C{TokenFile} / C{ReadOnlyTokenFile}: C{--token-source} is a file of
    C{token: host:port} lines (C{token: unix_socket:/PATH} for a Unix
    socket; blank lines and C{#} comments skipped), or a directory of such
    files.  C{TokenFile} reads them again when a file or the directory
    changed (websockify re-reads on every lookup); C{ReadOnlyTokenFile}
    reads them once, at the first lookup.
  - C{TokenFileName}: a directory; the token is a file name whose content
    is C{host:port}.
  - C{UnixDomainSocketDirectory}: a directory; the token is the name of a
    Unix socket in it.

The files are small and local: they are read on the reactor's thread.
A token never leaves the directory: one containing C{/}, NUL, or being
C{.}/C{..} names nothing.

A source that is missing or cannot be read is refused when the resolver
is made (a start-up error, L{check_source}); one that goes away later
makes each lookup L{Unavailable} (a 503, its "token store unavailable:
PATH: REASON" in the log), not "no such token".
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from twisted.logger import Logger

from wsrouter.config import Target, UnixTarget
from wsrouter.resolvers.base import ResolveRequest, Unavailable, split_target

log = Logger(namespace="wsrouter.resolvers")

_LINE_SPLIT = re.compile(r":\s")
#: Lines end where Python's universal newlines end them (websockify reads the file with
#: readlines()): not at the form feeds, U+0085 or U+2028 that str.splitlines() also takes.
_LINE_END = re.compile(r"\r\n?|\n")


def parse_token_lines(text: str, source: str) -> dict[str, Target]:
    """
    websockify's token file: C{token: host:port} per line.  A line that is
    not one is logged (file and line number) and skipped, as websockify does;
    so is a line with no token before the C{": "}, which no request could name.
    """
    targets: dict[str, Target] = {}
    for number, raw in enumerate(_LINE_END.split(text), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = _LINE_SPLIT.split(line)
        if len(parts) != 2 or not parts[0]:
            log.error("{source}:{number}: expected 'token: host:port' (or 'token: unix_socket:/PATH'); "
                      "line skipped", source=source, number=number)
            continue
        try:
            targets[parts[0]] = split_target(parts[1])
        except ValueError as e:
            log.error("{source}:{number}: expected 'token: host:port': {problem}; line skipped",
                      source=source, number=number, problem=e)
    return targets


def check_source(source: str, directory: bool) -> str:
    """
    C{source} as the plugin will use it: an existing, readable file or
    directory (only a directory when C{directory}).

    @raise ValueError: no source, or one that cannot be read (says why).
    """
    wanted = "a directory" if directory else "a token file or a directory of them"
    if not source:
        raise ValueError(f"no token source given: set it to {wanted} (--token-source)")
    try:
        if os.path.isdir(source):
            os.listdir(source)
        elif directory:
            os.stat(source)
            raise ValueError(f"{source} is not a directory")
        else:
            with open(source, "rb"):
                pass
    except OSError as e:
        raise ValueError(f"cannot read {source}: {e.strerror}") from None
    return source


def _still_there(directory: str) -> None:
    """@raise Unavailable: C{directory} is gone (or is no directory now)."""
    try:
        if not stat.S_ISDIR(os.stat(directory).st_mode):
            raise Unavailable(f"token store unavailable: {directory}: not a directory")
    except OSError as e:
        raise _unavailable(directory, e) from None


def _unavailable(path: str, error: OSError) -> Unavailable:
    return Unavailable(f"token store unavailable: {path}: {error.strerror}")


def _safe_name(token: str) -> bool:
    return bool(token) and "/" not in token and "\0" not in token and token not in (".", "..")


class ReadOnlyTokenFile:
    """websockify's C{ReadOnlyTokenFile}: a token file (or directory of them) read once."""

    reread = False

    def __init__(self, settings: Any, reactor: Any = None):
        self.source = check_source(settings.source, directory=False)
        self._targets: dict[str, Target] | None = None
        self._stamp: tuple[Any, ...] = ()

    def _files(self) -> list[str]:
        """
        The token files.

        @raise Unavailable: the source itself cannot be read.
        """
        if os.path.isdir(self.source):
            try:
                names = os.listdir(self.source)
            except OSError as e:
                raise _unavailable(self.source, e) from None
            return sorted(os.path.join(self.source, name) for name in names if not name.startswith("."))
        return [self.source]

    def _current_stamp(self) -> tuple[Any, ...]:
        """What changes when any token file or the directory does (names, sizes, times)."""
        stamps: list[Any] = []
        try:
            stamps.append(os.stat(self.source).st_mtime_ns)
        except OSError as e:
            raise _unavailable(self.source, e) from None
        for path in self._files():
            try:
                info = os.stat(path)
            except OSError:
                continue
            stamps.append((path, info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)

    def _load(self) -> dict[str, Target]:
        """
        Every file's tokens; a file of a directory that cannot be read is
        logged and skipped.

        @raise Unavailable: the source (a file, or the directory) cannot be read.
        """
        targets: dict[str, Target] = {}
        for path in self._files():
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    targets.update(parse_token_lines(f.read(), path))
            except OSError as e:
                if path == self.source:
                    raise _unavailable(path, e) from None
                log.error("cannot read token file {path}: {error}; its tokens are skipped", path=path,
                          error=e.strerror)
        return targets

    def resolve(self, request: ResolveRequest) -> Target | None:
        if self._targets is None or self.reread:
            stamp = self._current_stamp()
            if self._targets is None or stamp != self._stamp:
                self._targets, self._stamp = self._load(), stamp
        return self._targets.get(request.token or "")


class TokenFile(ReadOnlyTokenFile):
    """websockify's C{TokenFile}: like L{ReadOnlyTokenFile}, read again when a file changed."""

    reread = True


class TokenFileName:
    """websockify's C{TokenFileName}: the token names a file in the directory; it holds C{host:port}."""

    def __init__(self, settings: Any, reactor: Any = None):
        self.source = check_source(settings.source, directory=True)

    def resolve(self, request: ResolveRequest) -> Target | None:
        token = request.token or ""
        path = os.path.join(self.source, token)
        _still_there(self.source)
        if not _safe_name(token) or not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return split_target(f.read())


class UnixDomainSocketDirectory:
    """websockify's C{UnixDomainSocketDirectory}: the token is a Unix socket's name in the directory."""

    def __init__(self, settings: Any, reactor: Any = None):
        self.directory = os.path.abspath(check_source(settings.source, directory=True))

    def resolve(self, request: ResolveRequest) -> Target | None:
        token = request.token or ""
        _still_there(self.directory)
        if not _safe_name(token):
            return None
        path = os.path.join(self.directory, token)
        try:
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                return None
        except OSError:
            return None
        return UnixTarget(path)
