"""
Bearer tokens in the WebSocket URL's query (C{?access_token=TOKEN}, RFC 6750
section 2.3), for browsers: a page cannot set an C{Authorization} header on
a WebSocket handshake.

The token is taken as C{Authorization: Bearer TOKEN} when the request has
no C{Authorization} header of its own, so the C{[auth.NAME]} tables'
C{tokens} accept it like the header, and it is removed from the query the
router keeps, so it appears in no session log line, recording or
C{exec:} command's C{QUERY_STRING} / C{REQUEST_URI}.  (The terminal page
keeps its token in the URL's fragment, C{#token=...}, which browsers never
send, so the page's own request does not carry it either.)
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

PARAMETER = "access_token"


def query_token(uri: str) -> str | None:
    """The first C{access_token} of the request target's query, or C{None}."""
    for name, value in parse_qsl(urlsplit(uri).query, keep_blank_values=True):
        if name == PARAMETER:
            return value
    return None


def with_query_token(headers: Mapping[str, str], uri: str) -> Mapping[str, str]:
    """C{headers} (names lower case) with the query's token as a Bearer C{authorization}, unless one is there."""
    token = query_token(uri)
    if token is None or "authorization" in headers:
        return headers
    return {**headers, "authorization": f"Bearer {token}"}


def without_query_token(query: str) -> str:
    """C{query} without its C{access_token} parameters, the rest as it was written."""
    if PARAMETER not in query:
        return query
    kept = [part for part in query.split("&") if part.partition("=")[0] != PARAMETER]
    return "&".join(kept)
