"""permessage-deflate offers the router cannot meet are declined (RFC 7692 5, 7.1), never a failed handshake."""

from __future__ import annotations

import socket
import struct
import zlib
from typing import Any

import pytest
import pytest_twisted

from tests.support import in_thread, raw_upgrade, start_router
from wsrouter.config import Compression
from wsrouter.ws.deflate import usable_offers

#: (offer header, the answer's extension header with deflate on): None for no extension.
OFFERS = [
    pytest.param("permessage-deflate; server_max_window_bits=8", None, id="server-window-8"),
    pytest.param("permessage-deflate; server_max_window_bits=16", None, id="server-window-16"),
    pytest.param("permessage-deflate; foo=1", None, id="unknown-parameter"),
    pytest.param("permessage-deflate; client_max_window_bits=8", None, id="client-window-8"),
    pytest.param("permessage-deflate; server_no_context_takeover=yes", None, id="value-on-a-flag"),
    pytest.param("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", None,
                 id="repeated-parameter"),
    pytest.param("permessage-deflate; server_max_window_bits=8, permessage-deflate", "permessage-deflate",
                 id="fallback-offer"),
    pytest.param("permessage-deflate; foo=1, permessage-deflate; server_max_window_bits=10",
                 "permessage-deflate; server_max_window_bits=10", id="fallback-with-parameter"),
    pytest.param("x-webkit-deflate-frame, permessage-deflate", "permessage-deflate", id="unknown-extension-first"),
    pytest.param("permessage-bzip2; foo=1, permessage-deflate", "permessage-deflate", id="other-pmce-bad-params"),
]


def _offer_and_echo(port: int, offer: str) -> tuple[bytes, str | None, bytes]:
    """Handshake offering C{offer}; send one uncompressed text message; return status line, extension, reply."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        data = raw_upgrade(s, port, extra=f"Sec-WebSocket-Extensions: {offer}\r\n")
        head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        extension = None
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                extension = value.strip()
        if not status.startswith(b"HTTP/1.1 101"):
            return status + b" " + data, extension, b""
        message = b"hello " * 20
        s.sendall(struct.pack("!BB", 0x81, 0x80 | len(message)) + b"\0\0\0\0" + message)
        while len(data) < 2 or len(data) < 2 + data[1]:  # the reply is shorter than 126 bytes
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        first, payload = data[0], data[2:2 + data[1]]
        if first & 0x40:  # compressed
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        return status, extension, payload
    finally:
        s.close()


@pytest.mark.parametrize("deflate", [False, True])
@pytest.mark.parametrize(("offer", "answer"), OFFERS)
@pytest_twisted.inlineCallbacks
def test_offer_is_declined_not_refused(deflate: bool, offer: str, answer: str | None) -> Any:
    """Each offer gets 101; with deflate off no extension, on the first offer that can be met (or none); echo works."""
    router = start_router(routes=["/e=echo:"], compression={"permessage_deflate": deflate})
    try:
        status, extension, reply = yield in_thread(_offer_and_echo, router.port_number, offer)
        assert status.startswith(b"HTTP/1.1 101"), status
        assert extension == (answer if deflate else None)
        assert reply == b"hello " * 20
    finally:
        yield router.stopService()


@pytest.mark.parametrize(("offer", "answer"), OFFERS)
def test_usable_offers(offer: str, answer: str | None) -> None:
    """Only permessage-deflate offers whose parameters Autobahn can meet are kept, in order; none when off."""
    parsed = _parse(offer)
    on = usable_offers(parsed, Compression(permessage_deflate=True))
    assert [name for name, _ in on] == (["permessage-deflate"] if answer else [])
    assert usable_offers(parsed, Compression()) == []


def _parse(header: str) -> list[tuple[str, dict[str, list[Any]]]]:
    from autobahn.websocket.protocol import WebSocketProtocol

    return WebSocketProtocol._parseExtensionsHeader(None, header)  # type: ignore[no-any-return]
