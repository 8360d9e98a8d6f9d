"""
Configuration files (TOML) and how they combine with the command line.

The file is read first and the command line is combined over it: scalars
given on the command line win, its C{listen} and C{routes} entries are
appended after the file's, and tables merge key by key.  Each problem is
reported against where it was written: the file (with the file's own list
indices) or the command line.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from wsrouter.config.model import ConfigError, RouterConfig
from wsrouter.config.spec import build_config

COMMAND_LINE = "command line"
#: Top-level lists the command line appends to instead of replacing.
APPENDED = ("listen", "routes", "proxy_protocol", "trusted_proxies")


def read_file(path: str) -> dict[str, Any]:
    """
    The plain data of a TOML configuration file.

    @raise ConfigError: naming the file, for a file that cannot be read or
        is not TOML (the problem says the line and column).
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError([("", f"cannot read the configuration: {e.strerror or e}")], path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([("", f"not valid TOML: {e}")], path) from None
    except UnicodeDecodeError as e:
        raise ConfigError([("", f"not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})")], path) from None


def combine(file_raw: Mapping[str, Any], cli_raw: Mapping[str, Any]) -> dict[str, Any]:
    """The command line over the file: see the module docstring."""
    merged: dict[str, Any] = dict(file_raw)
    for key, value in cli_raw.items():
        if key in APPENDED and isinstance(merged.get(key), list) and isinstance(value, list):
            merged[key] = merged[key] + value
        else:
            merged[key] = _merge_tables(merged.get(key), value)
    return merged


def _merge_tables(old: Any, new: Any) -> Any:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        merged = dict(old)
        for key, value in new.items():
            merged[key] = _merge_tables(merged.get(key), value)
        return merged
    return new


_INDEXED = re.compile(r"\b(listen|routes|proxy_protocol|trusted_proxies)\[(\d+)\]")


class _Origins:
    """Says where (file or command line) a key path of the combined data was written."""

    def __init__(self, path: str, file_raw: Mapping[str, Any], cli_raw: Mapping[str, Any]):
        self.path = path
        self.file_raw = file_raw
        self.cli_raw = cli_raw

    def _count(self, key: str) -> int:
        value = self.file_raw.get(key)
        return len(value) if isinstance(value, list) and isinstance(self.cli_raw.get(key), list) else 0

    def locate(self, key: str) -> tuple[str, str]:
        """C{(source, key path as written there)} for a key path of the combined data."""
        match = _INDEXED.match(key)
        if match and match.start() == 0 and match.group(1) in self.cli_raw:
            index, in_file = int(match.group(2)), self._count(match.group(1))
            if index >= in_file:
                return COMMAND_LINE, f"{match.group(1)}[{index - in_file}]{key[match.end():]}"
            return self.path, key
        if _has(self.cli_raw, key):
            return COMMAND_LINE, key
        if _has(self.file_raw, key) or not self.cli_raw:
            return self.path, key
        return COMMAND_LINE, key

    def message(self, source: str, problem: str) -> str:
        """Indices named in a problem (a duplicate route) located too, naming the other source."""
        def place(match: re.Match[str]) -> str:
            where, key = self.locate(match.group(0))
            return key if where == source else f"{key} in {where}"

        return _INDEXED.sub(place, problem)


def _has(raw: Any, key: str) -> bool:
    """Whether the key path C{key} (C{a.b[2].c}) names something present in C{raw}."""
    if not key:
        return False
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", key):
        if part.startswith("[") and isinstance(raw, list) and int(part[1:-1]) < len(raw):
            raw = raw[int(part[1:-1])]
        elif isinstance(raw, Mapping) and part in raw:
            raw = raw[part]
        else:
            return False
    return True


def load_config(path: str | None, cli_raw: Mapping[str, Any]) -> RouterConfig:
    """
    The configuration from the file at C{path} (if any) with the command
    line's data (the nested schema) combined over it.

    @raise ConfigError: listing every problem, each naming the file or the
        command line, with the key path as written there.
    """
    if path is None:
        return build_config(cli_raw, COMMAND_LINE)
    file_raw = read_file(path)
    try:
        return build_config(combine(file_raw, cli_raw), path)
    except ConfigError as e:
        origins = _Origins(path, file_raw, cli_raw)
        problems, sources = [], []
        for key, problem in e.problems:
            source, local = origins.locate(key)
            problems.append((local, origins.message(source, problem)))
            sources.append(source)
        raise ConfigError(problems, path, sources) from None
