"""
The bundled terminal page: C{wstelnet.html} on xterm.js, with its scripts
and the vendored xterm.js files (C{wstelnet/} next to this module; see
docs/terminal.md and tools/vendor-xterm.sh).

Two ways to serve it: copy the C{wstelnet/} directory into a web root
(C{--web}), or mount it with C{[terminal] mount = "/term/"} (C{--terminal
/term/}), which serves it under that one path segment in front of the web
root, if any, with the web root's security headers (its
Content-Security-Policy allows the page: it has no inline script).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web import pages
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from wsrouter.config import RouterConfig
from wsrouter.web.static import WebRootFile, security_headers

#: The directory holding wstelnet.html and what it loads.
PAGE_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wstelnet")
PAGE = "wstelnet.html"


class TerminalMount(Resource):
    """The terminal page's directory under one path segment; every other path goes to the web root (or 404)."""

    def __init__(self, segment: str, page: IResource, web_root: IResource | None):
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        self._segment = segment.encode("utf-8")
        self._page = page
        self._web_root = web_root
        self._missing = pages.notFound("No Such Resource", "No such resource.")

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        if name == self._segment:
            return self._page
        if self._web_root is None:
            return self._missing
        child: IResource = self._web_root.getChildWithDefault(name, request)
        return child

    def render(self, request: IRequest) -> Any:
        return (self._web_root or self._missing).render(request)


def mount_terminal(config: RouterConfig, web_root: IResource | None) -> IResource | None:
    """C{web_root} with the terminal page mounted in front of it, if C{[terminal] mount} asks for it."""
    mount = config.terminal.mount
    if mount is None:
        return web_root
    web = config.web
    headers = security_headers(web.content_security_policy, web.frame_options) if web else security_headers()
    page = WebRootFile(PAGE_DIRECTORY, headers=headers)
    page.indexNames = [PAGE]
    return TerminalMount(mount.strip("/"), page, web_root)
