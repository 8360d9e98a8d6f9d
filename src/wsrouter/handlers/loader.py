"""
Finding a handler factory by name (C{package.module:factory}).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from wsrouter.importing import import_named


class HandlerLoadError(Exception):
    """The factory named cannot be loaded; the message says why and what to check."""


def load_factory(name: str) -> Callable[..., Any]:
    """
    Import C{package.module} and return its attribute C{factory} (a dotted
    path is followed: C{module:Class.make}).  The module is looked for on
    C{sys.path}, then in the current directory (L{wsrouter.importing}).

    @raise HandlerLoadError: the module cannot be imported (missing, or it
        raised while importing), it has no such attribute, or that is not callable.
    """
    module_name, _, attribute = name.partition(":")
    try:
        found: Any = import_named(module_name)
    except ModuleNotFoundError as e:
        raise HandlerLoadError(f"cannot import {module_name!r}: {e} (looked on PYTHONPATH and in the current "
                               f"directory, {os.getcwd()})") from None
    except Exception as e:  # any error raised by the module's own code
        raise HandlerLoadError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    walked = module_name
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise HandlerLoadError(f"{walked!r} has no attribute {part!r}") from None
        walked += (":" if walked == module_name else ".") + part
    if not callable(found):
        raise HandlerLoadError(f"{name!r} is not callable (a handler factory takes the route's context)")
    return found  # type: ignore[no-any-return]
