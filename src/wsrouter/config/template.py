"""
The command-line template of per-session wrapped programs.

A C{mode = "per-session"} program's command may use values from the
session in its arguments, and only these:

  - C{{session.id}}: the router's id for the session (letters and digits);
  - C{{route.path}}: the path of the route the client matched (from the
    configuration, not from the request);
  - C{{instance}}: the instance's slot, 1 to C{max_instances}, the lowest
    free one (a display number, say);
  - C{{query.NAME}}: the request's query parameter C{NAME}, which must match
    L{QUERY_VALUE} (else the handshake gets 400): never raw client text,
    never an option (it cannot start with C{-}).

C{{{} and C{}}} are literal braces.  Pure: no Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["QUERY_VALUE", "TemplateError", "render_argv", "template_fields", "template_problems"]

#: What a C{{query.NAME}} value must be: a letter or digit, then up to 63
#: letters, digits, C{_} or C{-}.
QUERY_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_QUERY_NAME = re.compile(r"query\.([A-Za-z0-9_-]{1,64})")
_FIXED = ("session.id", "route.path", "instance")


class TemplateError(ValueError):
    """A value cannot be put into the command: the message says which and why."""


def _fields(argument: str) -> list[str | None]:
    """The field names in C{argument}, in order; C{None} marks a lone brace or an empty field."""
    found: list[str | None] = []
    for match in _FIELD.finditer(argument):
        text = match.group(0)
        if text in ("{{", "}}"):
            continue
        found.append(match.group(1) or None)
    return found


def template_fields(argv: Sequence[str]) -> list[str]:
    """The session fields (C{{session.id}}, C{{query.NAME}}, ...) C{argv} uses, in order, each once."""
    used: list[str] = []
    for argument in argv:
        for name in _fields(argument):
            if name is not None and (name in _FIXED or _QUERY_NAME.fullmatch(name)) and name not in used:
                used.append(name)
    return used


def template_problems(argv: Sequence[str]) -> list[str]:
    """What is wrong with C{argv} as a template: unknown fields, lone braces ('{{' is a literal brace)."""
    problems = []
    if argv and _fields(argv[0]):
        problems.append("the program itself (argument 0) cannot be a template field")
    for index, argument in enumerate(argv):
        for name in _fields(argument):
            if name is None:
                problems.append(f"argument {index} ({argument!r}) has a lone brace or an empty field "
                                "(write {{ or }} for a literal brace)")
            elif name not in _FIXED and _QUERY_NAME.fullmatch(name) is None:
                problems.append(f"argument {index} uses unknown field {{{name}}} (known: {{session.id}}, "
                                "{route.path}, {instance}, {query.NAME})")
    return problems


def render_argv(argv: Sequence[str], values: Mapping[str, str], query: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """
    The command line with the fields filled in from C{values} (C{session.id},
    C{route.path}, C{instance}) and C{query} (parsed, all values per name).

    @raise TemplateError: a query parameter is missing, repeated or not
        L{QUERY_VALUE}; the message names it, never its value.
    """
    def fill(match: re.Match[str]) -> str:
        text = match.group(0)
        if text in ("{{", "}}"):
            return text[0]
        name = match.group(1) or ""
        query_name = _QUERY_NAME.fullmatch(name)
        if query_name is None:
            return values[name]
        given = query.get(query_name.group(1), [])
        if len(given) != 1 or QUERY_VALUE.fullmatch(given[0]) is None:
            raise TemplateError(f"query parameter {query_name.group(1)!r} must be given once and be 1 to 64 "
                                "letters, digits, '_' or '-' (not starting with '-' or '_')")
        return given[0]

    return tuple(_FIELD.sub(fill, argument) for argument in argv)
