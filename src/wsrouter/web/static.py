"""
The router's web root: static files served on the same port as the
WebSocket routes (a noVNC or terminal page next to its socket).

Built on L{twisted.web.static.File}, with its defaults made safe for a
directory that may hold more than the files meant for the public:

  - nothing outside the root is ever served: a file or directory whose real
    path (symlinks resolved) is not inside the root's real path is 404;
  - no directory listings unless asked for; a directory without
    C{index.html} is then 404, and is not even redirected to, so its
    existence does not leak;
  - only GET and HEAD; any other method is 405 with an C{Allow} header;
  - no script processors (C{.rpy}), an explicit type for the files web
    apps need, C{application/octet-stream} for unknown ones, and
    C{X-Content-Type-Options: nosniff}, so a browser never guesses HTML;
  - on every answer, file or error: a Content-Security-Policy
    (L{DEFAULT_CSP} unless configured) and C{X-Frame-Options}, so a page
    runs only its own scripts, talks only to its own origin, and cannot
    be framed by another site (clickjacking); C{Referrer-Policy:
    no-referrer}, so a URL with a token in its query is not sent on.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web import pages, static
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

ALLOWED_METHODS = (b"GET", b"HEAD")

#: Types set explicitly, whatever the host's mime.types says (many lack
#: .wasm and .mjs, and some still map .js to application/x-javascript).
CONTENT_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain",
    ".png": "image/png",
    ".ico": "image/vnd.microsoft.icon",
}

DEFAULT_TYPE = "application/octet-stream"

#: The web root's default Content-Security-Policy: scripts, fonts and
#: images from the page's own origin only (no inline scripts, no eval),
#: WebSockets and fetches to its own origin ('self' covers ws: and wss: of
#: the same host in current browsers), no plugins, no <base> tricks.
#: Inline styles stay allowed: pages such as noVNC's set style attributes,
#: and styles cannot run code.  Framing is decided by C{frame_options}.
DEFAULT_CSP = ("default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; form-action 'self'")
#: C{frame_options} values and the CSP C{frame-ancestors} each means.
FRAME_OPTIONS = {"sameorigin": "'self'", "deny": "'none'", "off": None}
#: C{content_security_policy} value that sends none.
OFF = "off"


def security_headers(csp: str | None = None, frame_options: str = "sameorigin") -> tuple[tuple[bytes, bytes], ...]:
    """
    The headers every web root answer carries.

    @param csp: the Content-Security-Policy; C{None} for L{DEFAULT_CSP}
        (plus a C{frame-ancestors} matching C{frame_options}), L{OFF} for none.
    @param frame_options: C{sameorigin} (default: only the router's own
        pages may frame these), C{deny}, or C{off} (any site may).
    """
    headers = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
    ancestors = FRAME_OPTIONS[frame_options]
    if ancestors is not None:
        headers.append((b"x-frame-options", frame_options.upper().encode("ascii")))
    if csp is None:
        csp = DEFAULT_CSP + (f"; frame-ancestors {ancestors}" if ancestors else "")
    if csp != OFF:
        headers.append((b"content-security-policy", csp.encode("ascii")))
    return tuple(headers)


class _MethodNotAllowed(Resource):
    """
    Answers every request 405, naming the methods the web root allows.

    Rendered here rather than by raising C{UnsupportedMethod}, for which
    twisted.web answers 501, not 405, to any method but GET, HEAD and POST.
    """

    isLeaf = True
    _page = pages.errorPage(405, "Method Not Allowed", "Only GET and HEAD are allowed here.")

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Resource is not annotated

    def render(self, request: IRequest) -> Any:
        request.setHeader(b"allow", b", ".join(ALLOWED_METHODS))
        return self._page.render(request)


_method_not_allowed = _MethodNotAllowed()


class WebRootFile(static.File):
    """
    A file or directory below the web root; see the module docstring.

    Every child is made by L{createSimilarFile}, so it keeps the root it
    must stay inside and the listing setting.

    @ivar root: the real path of the web root.
    @ivar listing: whether a directory without C{index.html} is listed.
    """

    contentTypes = {**static.File.contentTypes, **CONTENT_TYPES}
    processors: dict[str, Any] = {}
    indexNames = ["index.html"]
    allowedMethods = ALLOWED_METHODS
    # File's own (deprecated) resource classes are the declared types; any resource serves.
    childNotFound = pages.notFound("No Such Resource", "File not found.")  # type: ignore[assignment]
    forbidden = pages.forbidden()  # type: ignore[assignment]

    def __init__(self, path: str, *, root: str | None = None, listing: bool = False,
                 defaultType: str = DEFAULT_TYPE,
                 headers: tuple[tuple[bytes, bytes], ...] | None = None) -> None:
        """
        @param path: the file or directory this resource serves.
        @param root: the real path of the web root; C{path}'s own real path
            when C{None}.
        @param listing: list directories that have no C{index.html}.
        @param headers: set on every answer (L{security_headers}; the
            default ones when C{None}).
        """
        super().__init__(path, defaultType=defaultType)
        self.root = root if root is not None else os.path.realpath(path)
        self.listing = listing
        self.headers = security_headers() if headers is None else headers

    def _set_headers(self, request: IRequest) -> None:
        for name, value in self.headers:
            request.setHeader(name, value)

    def createSimilarFile(self, path: str) -> WebRootFile:
        """Make a child resource with the same root, listing, headers and types."""
        child = self.__class__(path, root=self.root, listing=self.listing, defaultType=self.defaultType,
                               headers=self.headers)
        child.processors = self.processors
        child.indexNames = self.indexNames[:]
        child.childNotFound = self.childNotFound
        return child

    def is_inside_root(self) -> bool:
        """Say whether this path, symlinks resolved, is the root or below it."""
        real = os.path.realpath(self.path)
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        """
        Return the child for one (already percent-decoded) path segment.

        A segment that is not UTF-8, or holds a NUL, a slash (from C{%2f})
        or a backslash, names nothing here; C{..} is refused by
        L{FilePath.child}; a child that resolves outside the root is 404.
        """
        self._set_headers(request)  # on errors from below too
        if request.method not in ALLOWED_METHODS:
            return _method_not_allowed
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return self.childNotFound
        if "\0" in name or "\\" in name or "/" in name:
            return self.childNotFound
        child: IResource = super().getChild(name, request)  # type: ignore[no-untyped-call]
        if isinstance(child, WebRootFile) and not child.is_inside_root():
            return self.childNotFound
        return child

    def directoryListing(self) -> IResource:
        """List the directory if listings are on; otherwise 404."""
        if not self.listing:
            return self.childNotFound
        return static.DirectoryLister(
            self.path, self.listNames(), self.contentTypes, self.contentEncodings, self.defaultType
        )

    def listNames(self) -> list[str]:
        """Names in this directory, without symlinks that lead outside the root."""
        return [name for name in super().listNames()  # type: ignore[no-untyped-call]
                if self.createSimilarFile(os.path.join(self.path, name)).is_inside_root()]

    def render(self, request: IRequest) -> Any:
        """Refuse every method but GET and HEAD with 405."""
        self._set_headers(request)
        if request.method not in ALLOWED_METHODS:
            return _method_not_allowed.render(request)
        return super().render(request)  # type: ignore[no-untyped-call]

    def render_GET(self, request: IRequest) -> Any:
        """
        Serve the file, checking once more, just before it is opened, that
        it lies inside the root.
        """
        self.restat(False)
        if not self.is_inside_root():
            return self.childNotFound.render(request)
        if self.isdir() and not self.listing and self.childSearchPreauth(*self.indexNames) is None:
            # Redirecting to "dir/" would only reveal that the directory exists.
            return self.childNotFound.render(request)
        self._set_headers(request)
        return super().render_GET(request)  # type: ignore[no-untyped-call]

    render_HEAD = render_GET


def build_web_root(directory: str, listing: bool = False,
                   headers: tuple[tuple[bytes, bytes], ...] | None = None) -> IResource:
    """
    Build the resource that serves C{directory} as the web root.

    @param directory: the directory to serve; symlinks inside it are
        followed only while they stay inside its real path.
    @param listing: list directories that have no C{index.html}.
    @param headers: set on every answer; L{security_headers}C{()} when C{None}.
    @raise ValueError: if C{directory} is not an existing directory, so
        the mistake shows at start-up, not as 404s.
    """
    root = os.path.realpath(directory)
    if not os.path.isdir(root):
        raise ValueError(f"web root {directory!r} is not a directory")
    return WebRootFile(root, root=root, listing=listing, headers=headers)
