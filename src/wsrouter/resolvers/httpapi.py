"""
websockify's C{BaseTokenAPI} and C{JSONTokenApi}: an HTTP GET of the
C{source} URL with the token put where its C{%s} is (URL-quoted, so a token
cannot add a path, query or host; C{.} and C{..}, which a server would
take as path steps, are refused with 400).

  - C{BaseTokenAPI}: a 2xx/3xx body C{host:port}.
  - C{JSONTokenApi}: a 2xx/3xx body C{{"host": ..., "port": ...}}.

Any other status means "no such token" (404), as websockify's
C{resp.ok}.  A server that cannot be reached is L{Unavailable} (503); a
body that is not the format, or over 64 KiB, is a 502.  Uses
C{twisted.web.client.Agent} (no thread); the resolver's timeout cancels
the request.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from wsrouter.config import Target
from wsrouter.refusal import Refuse
from wsrouter.resolvers.base import ResolveRequest, Unavailable, split_target, target_of_fields
from wsrouter.ws.internals import quiet_http_pool

#: The largest answer read from a token API.
MAX_BODY = 64 * 1024


class BodyTooLarge(Exception):
    """The token API's answer is over L{MAX_BODY}."""


class _Body(Protocol):
    def __init__(self, done: Deferred[bytes], limit: int):
        self.done, self.limit, self.size = done, limit, 0
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()  # type: ignore[union-attr]
            if not self.done.called:
                self.done.errback(BodyTooLarge(f"answer over {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):  # type: ignore[no-untyped-call, unused-ignore]
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def read_body(response: IResponse, limit: int = MAX_BODY) -> Deferred[bytes]:
    """The response body, failing with L{BodyTooLarge} past C{limit} bytes."""
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Body(done, limit))  # type: ignore[no-untyped-call, unused-ignore]
    return done


class BaseTokenAPI:
    """websockify's C{BaseTokenAPI}: GET C{source % token}; the body is C{host:port}."""

    def __init__(self, settings: Any, reactor: Any):
        if "%s" not in settings.source or not settings.source.startswith(("http://", "https://")):
            raise ValueError(f"token source must be an http(s) URL with %s for the token, not {settings.source!r}")
        self.source: str = settings.source
        self._agent = Agent(reactor, pool=quiet_http_pool(reactor))

    def url(self, token: str) -> bytes:
        return (self.source % quote(token, safe="")).encode("ascii")

    def resolve(self, request: ResolveRequest) -> Deferred[Target | None]:
        if not request.token:
            raise Refuse(400, "token not present")
        if request.token in (".", ".."):
            raise Refuse(400, "a token may not be '.' or '..'")
        asking = self._agent.request(b"GET", self.url(request.token))
        return asking.addCallbacks(self._answered, self._unreachable)

    def _unreachable(self, reason: Failure) -> Failure:
        if reason.check(ConnectError, DNSLookupError, ConnectingCancelledError):  # type: ignore[no-untyped-call, unused-ignore]
            raise Unavailable(f"token API unreachable: {_problem(reason.value)}")
        return reason

    def _answered(self, response: IResponse) -> Deferred[Target | None] | None:
        if not 200 <= response.code < 400:
            response.deliverBody(Protocol())  # type: ignore[no-untyped-call, unused-ignore]
            return None
        return read_body(response).addCallback(self._parsed)

    def _parsed(self, body: bytes) -> Target:
        try:
            return self.process_result(body)
        except (ValueError, KeyError, TypeError) as e:
            raise Refuse(502, f"token API answer is not a target: {e}") from None

    def process_result(self, body: bytes) -> Target:
        """websockify's C{process_result}: the body C{host:port}."""
        return split_target(body.decode("utf-8"))


class JSONTokenApi(BaseTokenAPI):
    """websockify's C{JSONTokenApi}: the body is C{{"host": ..., "port": ...}}."""

    def process_result(self, body: bytes) -> Target:
        try:
            answer = json.loads(body)
        except ValueError:
            raise ValueError("the answer is not JSON") from None
        return target_of_fields(answer, "the answer")


def _problem(error: BaseException | None) -> str:
    """An error's own words, else its kind (Twisted's connect errors say little alone)."""
    text = str(error).strip()
    return text or type(error).__name__
