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
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from twisted.logger import Logger

from wsrouter.config import Target, UnixTarget
from wsrouter.resolvers.base import ResolveRequest, split_target

log = Logger(namespace="wsrouter.resolvers")

_LINE_SPLIT = re.compile(r":\s")


def parse_token_lines(text: str, source: str) -> dict[str, Target]:
    """
    websockify's token file: C{token: host:port} per line.  A line that is
    not one is logged (file and line number) and skipped, as websockify does.
    """
    targets: dict[str, Target] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            token, target = _LINE_SPLIT.split(line)
            targets[token] = split_target(target)
        except ValueError as e:
            log.error("token file {source} line {number}: {problem}; line skipped",
                      source=source, number=number, problem=e)
    return targets


def _safe_name(token: str) -> bool:
    return bool(token) and "/" not in token and "\0" not in token and token not in (".", "..")


class ReadOnlyTokenFile:
    """websockify's C{ReadOnlyTokenFile}: a token file (or directory of them) read once."""

    reread = False

    def __init__(self, settings: Any, reactor: Any = None):
        self.source = settings.source
        self._targets: dict[str, Target] | None = None
        self._stamp: tuple[Any, ...] = ()

    def _files(self) -> list[str]:
        if os.path.isdir(self.source):
            return sorted(os.path.join(self.source, name) for name in os.listdir(self.source)
                          if not name.startswith("."))
        return [self.source]

    def _current_stamp(self) -> tuple[Any, ...]:
        """What changes when any token file or the directory does (names, sizes, times)."""
        stamps: list[Any] = []
        if os.path.isdir(self.source):
            stamps.append(os.stat(self.source).st_mtime_ns)
        for path in self._files():
            try:
                info = os.stat(path)
            except OSError:
                continue
            stamps.append((path, info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(stamps)

    def _load(self) -> dict[str, Target]:
        targets: dict[str, Target] = {}
        for path in self._files():
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    targets.update(parse_token_lines(f.read(), path))
            except OSError as e:
                log.error("cannot read token file {path}: {error}", path=path, error=e.strerror)
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
        self.source = settings.source

    def resolve(self, request: ResolveRequest) -> Target | None:
        token = request.token or ""
        path = os.path.join(self.source, token)
        if not _safe_name(token) or not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return split_target(f.read())


class UnixDomainSocketDirectory:
    """websockify's C{UnixDomainSocketDirectory}: the token is a Unix socket's name in the directory."""

    def __init__(self, settings: Any, reactor: Any = None):
        self.directory = os.path.abspath(settings.source)

    def resolve(self, request: ResolveRequest) -> Target | None:
        token = request.token or ""
        if not _safe_name(token):
            return None
        path = os.path.join(self.directory, token)
        try:
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                return None
        except OSError:
            return None
        return UnixTarget(path)
