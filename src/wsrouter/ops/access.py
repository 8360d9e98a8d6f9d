"""
Who may see the operator's pages: loopback clients, or, with C{ops.auth},
whoever passes that C{[auth.NAME]}.

The client address is the real one (PROXY header, or the forwarding
headers of a trusted proxy), so a reverse proxy on loopback that is not
in C{trusted_proxies} makes every client it forwards look local: name it
there, or set C{ops.auth}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import errorPage
from twisted.web.resource import IResource
from twisted.web.server import Request
from twisted.web.util import DeferredResource

from wsrouter.auth import NotAuthorized
from wsrouter.clientaddr import parse_host, real_client
from wsrouter.tls import client_subject

if TYPE_CHECKING:
    from wsrouter.gateway import Gateway

log = Logger(namespace="wsrouter.ops")


def request_client(request: Request, trusted_proxies: tuple[str, ...]) -> str:
    """The client's address (C{"unix"} on a Unix socket listener)."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if not host:
        return "unix"
    headers = [(name.decode("latin-1").lower(), value.decode("latin-1"))
               for name, values in request.requestHeaders.getAllRawHeaders() for value in values]
    return real_client((str(host), int(getattr(peer, "port", 0) or 0)), headers, trusted_proxies)[0]


def is_local(host: str) -> bool:
    """Loopback addresses (IPv4, IPv6, IPv4-mapped) and Unix sockets are local."""
    if host == "unix":
        return True
    address = parse_host(host)
    return address is not None and address.is_loopback


def guarded(gateway: Gateway, request: Request, page: IResource, what: str) -> IResource:
    """
    C{page} if the client may see the operator's pages, else a 403 (not
    loopback, no C{ops.auth}) or 401 with the challenge; each refusal is
    logged without the credentials.
    """
    config = gateway.config
    host = request_client(request, config.proxies.trusted_proxies)
    path = request.uri.decode("latin-1")
    if config.ops.auth is None:
        if is_local(host):
            return page
        log.info("refused {peer} {path}: 403 the {what} is for loopback clients "
                 "(set ops.auth to let others in with credentials)", peer=host, path=path, what=what)
        return errorPage(403, "Forbidden", f"The {what} is for loopback clients only.")
    headers = {name.decode("latin-1").lower(): values[0].decode("latin-1")
               for name, values in request.requestHeaders.getAllRawHeaders()}
    checking = gateway.authenticator.check(config.ops.auth, headers, host, client_subject(request.transport))
    return DeferredResource(checking.addCallbacks(lambda _: page, _refused, errbackArgs=(request, host, what)))


def _refused(reason: Failure, request: Request, host: str, what: str) -> IResource:
    reason.trap(NotAuthorized)
    error: NotAuthorized = reason.value  # type: ignore[assignment]
    path = request.uri.decode("latin-1")
    log.info("refused {peer} {path}: {status} {reason} (the {what} asks for ops.auth)",
             peer=host, path=path, status=error.status, reason=error.reason, what=what)
    if error.status != 401:
        return errorPage(error.status, "Forbidden", error.reason)
    for name, value in error.challenge:
        request.responseHeaders.addRawHeader(name, value)
    return errorPage(401, "Unauthorized", error.reason)
