"""
A small TOML writer for the plain data of L{wsrouter.config.to_data}:
strings, booleans, integers, finite floats, lists of those, tables, and
lists of tables; enough that C{tomllib.loads(dumps(data)) == data}.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    def escape(match: re.Match[str]) -> str:
        char = match.group(0)
        return _ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + re.sub(r'["\\\x00-\x1f\x7f]', escape, text) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no {value!r} here")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _table(data: Mapping[str, Any], path: list[str], out: list[str]) -> None:
    """Plain keys first, then sub-tables, then lists of tables (TOML needs that order)."""
    for key, value in data.items():
        if not isinstance(value, Mapping) and not _is_table_list(value):
            out.append(f"{_key(key)} = {_value(value)}")
    for key, value in data.items():
        if isinstance(value, Mapping):
            name = [*path, _key(key)]
            if not value or not all(isinstance(v, Mapping) or _is_table_list(v) for v in value.values()):
                out.append("")
                out.append(f"[{'.'.join(name)}]")  # a table of tables only needs its sub-tables' headers
            _table(value, name, out)
    for key, value in data.items():
        if _is_table_list(value):
            name = [*path, _key(key)]
            for item in value:
                out.append("")
                out.append(f"[[{'.'.join(name)}]]")
                _entry(item, out)


def _entry(item: Mapping[str, Any], out: list[str]) -> None:
    """One entry of a list of tables: its tables are written inline (a route's env)."""
    for key, value in item.items():
        out.append(f"{_key(key)} = {_value(value)}")


def dumps(data: Mapping[str, Any]) -> str:
    """C{data} as a TOML document."""
    out: list[str] = []
    _table(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"
