"""
One parse of a WebSocket upgrade request: when a connection's first read
holds a whole, plain upgrade request for the router, the connection goes
straight to Autobahn, which parses the request (once), instead of through
a twisted.web Request first.

Going through twisted.web costs a line-by-line parse of the head, a
Request, the resource lookup and the head joined back into bytes for
Autobahn (L{wsrouter.ws.upgrade.raw_request}), about a tenth of the
router's CPU per short-lived connection; none of it decides anything for
an upgrade that twisted.web would hand on unchanged.  So this path takes
only requests where the result is known to be the same:

  - the first read of the connection holds the whole head (up to the
    empty line), within C{limits.max_header_bytes};
  - the request line is C{GET /target HTTP/1.1} and every header line is
    one twisted.web accepts as it is (a token name directly followed by a
    colon, no NUL, CR or LF in the value, no folded lines, at most its
    500 headers), the last C{Upgrade} header names C{websocket}, and there
    is no C{Content-Length}, C{Transfer-Encoding} (no body) or C{Expect}
    (twisted.web would answer C{100 Continue} first);
  - the Site's root is the router's own L{RouterResource} (mounted in
    someone else's tree, that tree decides), and the path is none of the
    operator's pages (L{wsrouter.ops.pages.OpsPages.may_claim}).

Anything else -- a head split over reads, trickled or too large, plain
HTTP, other methods, HTTP/1.0, the second request of a kept-alive
connection -- takes twisted.web's path as before, with its 408/431
answers, web root, C{web_auth}, 426/404 and operator's pages.  What
twisted.web did for an upgrade and nobody could observe (a Request never
finished, so no access log line and no Date header) is not done here;
its idle timer and the head deadline are stopped, as when the request
is handed over from a resource.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from wsrouter.web.resource import RouterResource
from wsrouter.ws.adapter import ClientFactory

#: twisted.web's limit on header lines per request (C{HTTPChannel.maxHeaders}).
MAX_HEADERS = 500

#: A head twisted.web parses as it is: GET, a request target of the bytes
#: it accepts (33 to 176), HTTP/1.1, header lines with a token name, a
#: colon and a value without NUL, CR or LF, and the empty line.
_HEAD = re.compile(
    rb"GET (/[\x21-\xb0]*+) HTTP/1\.1\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[^\x00\r\n]*+\r\n)*+"
    rb"\r\n")

#: Headers that make twisted.web do more than hand the request on (in a lower-cased head).
_NOT_PLAIN = re.compile(rb"\r\n(?:content-length|transfer-encoding|expect):")


def upgrade_target(data: bytes, max_head: int) -> bytes | None:
    """
    The request target if C{data} starts with a whole upgrade request head
    of at most C{max_head} bytes that twisted.web would hand to the
    WebSocket upgrade unchanged (see the module's docstring); else C{None}.
    """
    if not data.startswith(b"GET /"):
        return None
    end = data.find(b"\r\n\r\n", 0, max_head)
    if end < 0:
        return None
    head = data[:end + 4]
    lowered = head.lower()
    at = lowered.rfind(b"\r\nupgrade:")
    if at < 0 or lowered.find(b"websocket", at, lowered.index(b"\r\n", at + 2)) < 0:
        return None
    if _NOT_PLAIN.search(lowered) is not None:
        return None
    if head.count(b"\r\n") - 2 > MAX_HEADERS:
        return None
    match = _HEAD.fullmatch(head)
    return match.group(1) if match is not None else None


def upgrade_factory(channel: Any, data: bytes, max_head: int) -> ClientFactory | None:
    """
    The router's WebSocket factory if C{data}, the first read of
    C{channel}'s connection, is an upgrade request it may take directly
    (mounted at the root, so with no mount prefix); else C{None}.
    """
    router = getattr(getattr(channel, "site", None), "resource", None)
    if type(router) is not RouterResource:
        return None
    target = upgrade_target(data, max_head)
    if target is None:
        return None
    ops = router.ops
    if ops is not None and ops.may_claim(unquote(target.partition(b"?")[0].decode("utf-8", "replace"))):
        return None
    return router.gateway.factory
