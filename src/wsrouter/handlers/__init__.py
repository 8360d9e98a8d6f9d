"""
In-process Python handlers: the C{python:package.module:factory} target.

See L{wsrouter.handlers.api} and docs/handlers.md.
"""

from wsrouter.handlers.api import (
    HANDLER_ERROR,
    TOO_SLOW,
    Accept,
    Group,
    Handler,
    HandlerContext,
    Request,
)
from wsrouter.handlers.loader import HandlerLoadError, load_factory
from wsrouter.handlers.session import Session, SessionClosed
from wsrouter.refusal import Refuse  # one class, wsrouter.resolvers.Refuse too

__all__ = [
    "HANDLER_ERROR",
    "TOO_SLOW",
    "Accept",
    "Group",
    "Handler",
    "HandlerContext",
    "HandlerLoadError",
    "Refuse",
    "Request",
    "Session",
    "SessionClosed",
    "load_factory",
]
