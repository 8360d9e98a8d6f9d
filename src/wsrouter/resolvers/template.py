"""
The template resolver: C{source} is a target string with placeholders,
e.g. C{unix:///run/vnc/{token}.sock} or C{tcp://10.0.0.{query.n}:5900}.

Placeholders: C{{token}} (websockify's token, L{base.token_of}),
C{{query.NAME}}, C{{cookie.NAME}}, C{{header.NAME}} and C{{path}} (the one
segment below a prefix route).  Every value must be 1 to 64 of
C{A-Z a-z 0-9 _ -}: no C{/}, no C{.} (so no C{..} and no extra host
labels), no C{:} or C{@} (no port or user), no NUL, no C{%}, no space -- a
value can never leave its place in the pattern.  A missing value is a 400,
a value that breaks these rules a 400 too; neither is ever connected.
"""

from __future__ import annotations

import re
from typing import Any

from wsrouter.config import ConfigError, Target, parse_target
from wsrouter.refusal import Refuse
from wsrouter.resolvers.base import RESOLVABLE, ResolveRequest

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"token|path|(query|cookie|header)\.[A-Za-z0-9_.-]+")
#: What a value may be: it fills one place and cannot reach past it.
SAFE_VALUE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def template_problem(pattern: str) -> str | None:
    """What is wrong with a template (for the config check), or C{None}."""
    names = _PLACEHOLDER.findall(pattern)
    if not names:
        return f"template {pattern!r} has no {{placeholder}} (token, path, query.NAME, cookie.NAME, header.NAME)"
    bad = [name for name in names if not _NAME.fullmatch(name)]
    if bad:
        return f"unknown placeholder {{{bad[0]}}}; use token, path, query.NAME, cookie.NAME or header.NAME"
    if "{" in _PLACEHOLDER.sub("", pattern) or "}" in _PLACEHOLDER.sub("", pattern):
        return f"template {pattern!r} has an unbalanced brace"
    scheme = pattern.split("{", 1)[0]
    if "://" not in scheme and not scheme.startswith("echo"):
        return f"template {pattern!r} must start with its scheme, e.g. tcp://HOST:{{query.port}} or unix:///run/{{token}}.sock"
    try:
        target = parse_target(_PLACEHOLDER.sub("1", pattern))
    except (ValueError, ConfigError) as e:
        # The check filled each placeholder with "1"; say so, or the message quotes text nobody wrote.
        return f"template {pattern!r} does not make a target (with each placeholder filled in as 1): {e}"
    if not isinstance(target, RESOLVABLE):
        return f"template {pattern!r} makes a {target.describe()} target; resolvers give network and socket targets"
    return None


def value_for(request: ResolveRequest, name: str) -> str | None:
    """The request's value for placeholder C{name}, or C{None}."""
    if name == "token":
        return request.token
    if name == "path":
        below = request.path_info.strip("/")
        return below or None
    kind, _, key = name.partition(".")
    if kind == "query":
        return request.query_value(key)
    if kind == "cookie":
        return request.cookies.get(key)
    return request.header(key)


class TemplateResolver:
    """Fills the C{source} template from the request (see the module docstring)."""

    def __init__(self, settings: Any, reactor: Any = None):
        problem = template_problem(settings.source)
        if problem is not None:
            raise ValueError(problem)
        self.pattern: str = settings.source

    def render(self, request: ResolveRequest) -> str:
        """
        The target string for C{request}.

        @raise Refuse: 400 when a value is missing or not L{SAFE_VALUE}.
        """
        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            value = value_for(request, name)
            if value is None or value == "":
                raise Refuse(400, f"missing {name}")
            if not SAFE_VALUE.fullmatch(value):
                raise Refuse(400, f"{name} may only hold letters, digits, '_' and '-' (at most 64)")
            return value

        return _PLACEHOLDER.sub(fill, self.pattern)

    def resolve(self, request: ResolveRequest) -> Target:
        text = self.render(request)
        try:
            target = parse_target(text)
        except (ValueError, ConfigError):
            raise Refuse(400, "the request's values make no valid target") from None
        return target
