"""
The operator's pages on the router's own port, at the paths of C{[ops]}
(read at each request, so a reload moves or turns them off):

  - C{metrics}: Prometheus text format (L{wsrouter.ops.metrics});
  - C{healthz}: C{200 ok} while serving; C{503} and the reasons while the
    router shuts down, refuses sessions for want of file descriptors, or a
    C{respawn} wrapped program is not running (an idle on-demand one is
    not expected to);
  - C{status}: the status page, C{STATUS/live} its WebSocket feed,
    C{STATUS/watch/ID} a session's watch page and WebSocket.

Metrics and status are for loopback clients, or those who pass
C{ops.auth} (L{wsrouter.ops.access}); the health check is for anyone.
"""

from __future__ import annotations

import html
import importlib.resources
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from wsrouter.ops.access import guarded, request_client
from wsrouter.ops.metrics import CONTENT_TYPE_LATEST, RouterMetrics
from wsrouter.ops.status import StatusFactory, StatusHub
from wsrouter.ops.watch import WatchFactory, watchers_open
from wsrouter.ws.upgrade import WebSocketUpgrade, is_websocket_upgrade

if TYPE_CHECKING:
    from wsrouter.gateway import Gateway
    from wsrouter.session import Session

#: The pages' own policy: their script and WebSocket from this origin only.
PAGE_CSP = b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; " \
           b"frame-ancestors 'none'"
#: The watch page's: xterm.js sets its renderer's styles inline (scripts stay 'self' only).
WATCH_CSP = PAGE_CSP.replace(b"style-src 'self'", b"style-src 'self' 'unsafe-inline'")
#: The bundled xterm.js files the watch page loads from C{STATUS/xterm/} (L{wsrouter.web} package data).
_XTERM = {"xterm.js": b"text/javascript; charset=utf-8", "xterm.css": b"text/css; charset=utf-8"}
_ASSETS = ("status.html", "status.js", "watch.html", "watch.js", "ops.css")


def _asset(name: str) -> bytes:
    if name.startswith("xterm/"):
        return importlib.resources.files("wsrouter.web").joinpath("wstelnet", name).read_bytes()
    return importlib.resources.files("wsrouter.ops").joinpath("assets", name).read_bytes()


class OpsPages:
    """
    The operator's pages of one gateway; its metrics and live status
    clients are kept from the start, whether or not a page is on.

    @ivar programs: the wrapped programs now (the service sets it).
    """

    def __init__(self, gateway: Gateway, clock: Any):
        self.gateway = gateway
        self.clock = clock
        self.programs: Callable[[], Iterable[Any]] = tuple
        self.metrics = RouterMetrics(gateway, self._programs_now, lambda: watchers_open(gateway.sessions.values()))
        self.status = StatusHub(gateway, clock, self._programs_now)

    def set_worker(self, index: int) -> None:
        """Under C{--workers N}: metrics and status say they come from worker C{index} (each has its own)."""
        self.metrics.worker = str(index)
        self.status.worker = index

    def _programs_now(self) -> Iterable[Any]:
        return self.programs()

    def may_claim(self, path: str) -> bool:
        """
        Whether C{path} (unquoted, below the mount point) may be one of the
        operator's pages (L{page_for} decides): the health check, the
        metrics, or anything under the status page.  Needs no request, for
        L{wsrouter.web.fastupgrade}.
        """
        ops = self.gateway.config.ops
        status = ops.status
        return (path == ops.healthz or path == ops.metrics
                or (status is not None and (path == status or path.startswith(status + "/"))))

    def page_for(self, request: Request, mount_prefix: str) -> IResource | None:
        """The page for C{request}, or C{None} if its path is none of the operator's."""
        ops = self.gateway.config.ops
        if ops.metrics is None and ops.status is None and ops.healthz is None:
            return None
        path = unquote(request.path.decode("utf-8", "replace"))[len(mount_prefix):]
        if path == ops.healthz:
            return _Text(self.health)
        if path == ops.metrics:
            return guarded(self.gateway, request, _Metrics(self.metrics), "metrics page")
        status = ops.status
        if status is None or not (path == status or path.startswith(status + "/")):
            return None
        page = self._status_page(request, path[len(status):], mount_prefix + status)
        return guarded(self.gateway, request, page, "status page") if page is not None else None

    def _status_page(self, request: Request, rest: str, base: str) -> IResource | None:
        secure = request.isSecure()
        if rest == "" or rest == "/":
            return _Asset("status.html", b"text/html; charset=utf-8", base)
        if rest.startswith("/") and rest[1:] in _ASSETS and not rest.endswith(".html"):
            kind = b"text/javascript; charset=utf-8" if rest.endswith(".js") else b"text/css; charset=utf-8"
            return _Asset(rest[1:], kind)
        if rest.startswith("/xterm/") and rest[len("/xterm/"):] in _XTERM:
            return _Asset(rest[1:], _XTERM[rest[len("/xterm/"):]])
        if rest == "/live":
            return self._upgrade(request, StatusFactory(self.status, secure))
        if rest.startswith("/watch/") and "/" not in rest[len("/watch/"):]:
            session_id = rest[len("/watch/"):]
            if not is_websocket_upgrade(request):
                return _Asset("watch.html", b"text/html; charset=utf-8", base, WATCH_CSP)
            limits = self.gateway.config.limits
            factory = WatchFactory(
                session_id, self._open_session, limit=self.gateway.config.ops.watch_queue,
                max_message_size=limits.max_message_size, clock=self.clock,
                peer=request_client(request, self.gateway.config.proxies.trusted_proxies), secure=secure,
                on_dropped=self.metrics.watchers_dropped.inc)
            return self._upgrade(request, factory)
        return None

    def _upgrade(self, request: Request, factory: Any) -> IResource:
        if not is_websocket_upgrade(request):
            return _Text(lambda: (426, "this is a WebSocket endpoint\n"))
        upgrade: IResource = WebSocketUpgrade(factory, "")
        return upgrade

    def _open_session(self, session_id: str) -> Session | None:
        session = self.gateway.sessions.get(session_id)
        return session if session is not None and session.is_open and not session.ended else None

    def health(self) -> tuple[int, str]:
        """C{(200, "ok")} while serving, else C{(503, reasons)}."""
        problems = []
        if self.gateway.stopping:
            problems.append("shutting down")
        guard = self.gateway.descriptors
        if guard is not None and guard.refusing:
            problems.append("refusing sessions: too few file descriptors left")
        for program in self.programs():
            if _should_run(program) and not program.running:
                problems.append(f"wrapped program {program.name} is not running")
        if problems:
            return 503, "unhealthy: " + "; ".join(problems) + "\n"
        return 200, "ok\n"

    def stop(self) -> None:
        self.status.stop()


def _should_run(program: Any) -> bool:
    """
    Whether a wrapped program that is not running is a fault: a respawn
    one started with the router, or an on-demand one while it has
    sessions.  An idle on-demand program (before its first client, after
    an idle stop) is not running by design; per-session ones run only
    with their sessions.
    """
    if program.target.mode != "respawn":
        return False
    return getattr(program.target, "start", "always") != "on-demand" or getattr(program, "sessions", 0) > 0


class _Text(Resource):
    isLeaf = True

    def __init__(self, answer: Callable[[], tuple[int, str]]):
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self._answer = answer

    def render_GET(self, request: Request) -> bytes:
        status, text = self._answer()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return text.encode()

    render_HEAD = render_GET


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, metrics: RouterMetrics):
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return self._metrics.render()


class _Asset(Resource):
    isLeaf = True

    def __init__(self, name: str, content_type: bytes, base: str = "", csp: bytes = PAGE_CSP):
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self._csp = csp
        self._name = name
        self._type = content_type
        self._base = html.escape(base, quote=True).encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._type)
        request.setHeader(b"content-security-policy", self._csp)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        return _asset(self._name).replace(b"{{BASE}}", self._base)
