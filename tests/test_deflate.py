"""permessage-deflate (RFC 7692): negotiation, both directions, context takeover, and the bomb limit."""

from __future__ import annotations

import socket
import struct
import zlib
from typing import Any

import pytest
import pytest_twisted
from autobahn.websocket.compress import PerMessageDeflateOffer
from websockets.exceptions import ConnectionClosedError
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.support import connect, in_thread, start_router
from wsrouter.cli.lower import options_to_raw
from wsrouter.config import Compression, ConfigError, build_config
from wsrouter.ws.deflate import INFLATE_STEP, Deflater, InflateError, Inflater, Negotiated, accept_offer
from wsrouter.ws.parser import FrameParser

# -- the codec, pure ----------------------------------------------------------------------


def _inflate_all(inflater: Inflater, data: bytes) -> bytes:
    inflater.begin()
    return b"".join([*inflater.feed(data), *inflater.end()])


@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_deflater_output_inflates_back(no_context_takeover: bool) -> None:
    """Messages compressed one after another inflate back, with or without context takeover."""
    negotiated = Negotiated(server_no_context_takeover=no_context_takeover,
                            client_no_context_takeover=no_context_takeover)
    deflater = Deflater(negotiated)
    # The router's output, read the way a client reads it (one decompressor, tail appended).
    reader = zlib.decompressobj(-15)
    for message in [b"", b"hello " * 100, bytes(range(256)) * 10, b"hello " * 100]:
        compressed = deflater.compress(message)
        assert not compressed.endswith(b"\x00\x00\xff\xff")
        assert reader.decompress(compressed + b"\x00\x00\xff\xff") == message


def test_context_takeover_shrinks_a_repeated_message() -> None:
    """With context takeover a repeated message compresses smaller the second time; without, the same."""
    message = bytes(range(256)) * 4
    taking = Deflater(Negotiated())
    assert len(taking.compress(message)) > len(taking.compress(message))
    fresh = Deflater(Negotiated(server_no_context_takeover=True))
    assert fresh.compress(message) == fresh.compress(message)


def test_inflater_keeps_or_drops_context() -> None:
    """A message relying on the previous one's window inflates only when the client keeps its context."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    message = bytes(range(256)) * 4
    first = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    second = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    keeping = Inflater(Negotiated())
    assert _inflate_all(keeping, first[:-4]) == message
    assert _inflate_all(keeping, second[:-4]) == message
    dropping = Inflater(Negotiated(client_no_context_takeover=True))
    assert _inflate_all(dropping, first[:-4]) == message
    with pytest.raises(InflateError) as raised:
        _inflate_all(dropping, second[:-4])
    assert raised.value.code == 1007


def test_bomb_is_cut_at_the_limit_in_bounded_steps() -> None:
    """A small input inflating past the limit raises 1009 after at most the limit, a step at a time."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(bytes(50 * 1024 * 1024)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(data) < 100 * 1024
    inflater = Inflater(Negotiated(), max_size=1024 * 1024)
    inflater.begin()
    produced = 0
    with pytest.raises(InflateError) as raised:
        for piece in inflater.feed(data):
            assert len(piece) <= INFLATE_STEP
            produced += len(piece)
    assert raised.value.code == 1009
    assert produced <= 1024 * 1024


def test_message_ending_with_a_final_block() -> None:
    """A message ended with a final deflate block inflates, and the next one starts a new context."""
    inflater = Inflater(Negotiated())
    for message in [b"first " * 20, b"second " * 20]:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        assert _inflate_all(inflater, compressor.compress(message) + compressor.flush(zlib.Z_FINISH)) == message


def test_garbage_is_1007() -> None:
    """Bytes that are not deflate data close with 1007."""
    inflater = Inflater(Negotiated())
    with pytest.raises(InflateError) as raised:
        _inflate_all(inflater, b"\xff\xff\xff\xff\xff")
    assert raised.value.code == 1007


@pytest.mark.parametrize(("params", "settings", "expected"), [
    pytest.param([], Compression(permessage_deflate=True), "permessage-deflate", id="plain"),
    pytest.param([("client_max_window_bits", True)], Compression(permessage_deflate=True, client_max_window_bits=10),
                 "permessage-deflate; client_max_window_bits=10", id="ask-client-window"),
    pytest.param([], Compression(permessage_deflate=True, client_max_window_bits=10), "permessage-deflate",
                 id="client-window-not-offered"),
    pytest.param([("server_no_context_takeover", True)], Compression(permessage_deflate=True),
                 "permessage-deflate; server_no_context_takeover", id="client-asks-no-takeover"),
    pytest.param([("client_no_context_takeover", True)],
                 Compression(permessage_deflate=True, client_no_context_takeover=True),
                 "permessage-deflate; client_no_context_takeover", id="ask-client-no-takeover"),
    pytest.param([("server_max_window_bits", "10")], Compression(permessage_deflate=True),
                 "permessage-deflate; server_max_window_bits=10", id="client-asks-server-window"),
])
def test_accept_offer(params: list[tuple[str, Any]], settings: Compression, expected: str) -> None:
    """The answer to an offer carries the parameters the settings and the offer together allow."""
    offer = PerMessageDeflateOffer.parse({name: [value] for name, value in params})  # type: ignore[no-untyped-call, unused-ignore]
    assert accept_offer(offer, settings).get_extension_string() == expected  # type: ignore[no-untyped-call, unused-ignore]


# -- configuration -----------------------------------------------------------------------------


def test_command_line_flag_turns_it_on() -> None:
    """--permessage-deflate lowers to compression.permessage_deflate, and leaving it out leaves the table out."""
    assert options_to_raw({"permessage-deflate": True})["compression"] == {"permessage_deflate": True}
    assert "compression" not in options_to_raw({})
    assert build_config({"routes": [{"path": "/", "target": "echo:"}]}).compression == Compression()


@pytest.mark.parametrize(("table", "key"), [
    pytest.param({"server_max_window_bits": 8}, "compression.server_max_window_bits", id="window-too-small"),
    pytest.param({"client_max_window_bits": 16}, "compression.client_max_window_bits", id="window-too-big"),
    pytest.param({"permessage_deflate": "yes"}, "compression.permessage_deflate", id="not-a-boolean"),
    pytest.param({"level": 9}, "compression.level", id="unknown-key"),
])
def test_bad_compression_settings_name_their_key(table: dict[str, Any], key: str) -> None:
    """A bad [compression] value is reported with its key path."""
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": [{"path": "/", "target": "echo:"}], "compression": table})
    assert [k for k, _ in caught.value.problems] == [key]


# -- the parser ------------------------------------------------------------------------------


class _Handler:
    def __init__(self) -> None:
        self.messages: list[tuple[bool, bytes]] = []
        self.failed: tuple[int, str] | None = None
        self._parts: list[bytes] = []
        self._binary = False

    def message_begin(self, is_binary: bool) -> None:
        self._binary, self._parts = is_binary, []

    def message_data(self, payload: bytes) -> None:
        self._parts.append(payload)

    def message_end(self) -> None:
        self.messages.append((self._binary, b"".join(self._parts)))

    def ping(self, payload: bytes) -> None: ...

    def pong(self, payload: bytes) -> None: ...

    def close(self, code: int | None, reason: bytes | None) -> None: ...

    def fail(self, code: int, reason: str) -> None:
        self.failed = (code, reason)


def _frame(payload: bytes, opcode: int, *, fin: bool = True, rsv1: bool = False) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if len(payload) < 126:
        head = struct.pack("!BB", first, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    return head + b"\0\0\0\0" + payload


def _compress(message: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_parser_inflates_compressed_fragmented_message_fed_byte_by_byte() -> None:
    """A compressed text message in two frames, then a plain one, parse the same fed whole or a byte at a time."""
    text = "héllo wörld " * 50
    compressed = _compress(text.encode())
    stream = (_frame(compressed[:10], 1, fin=False, rsv1=True) + _frame(compressed[10:], 0)
              + _frame(b"plain", 2))
    for step in (len(stream), 1):
        handler = _Handler()
        parser = FrameParser(handler, 0, Inflater(Negotiated()))
        for i in range(0, len(stream), step):
            parser.feed(stream[i:i + step])
        assert handler.failed is None
        assert handler.messages == [(False, text.encode()), (True, b"plain")]


@pytest.mark.parametrize(("stream", "inflater", "code"), [
    pytest.param(_frame(_compress(b"x"), 2, rsv1=True), False, 1002, id="not-negotiated"),
    pytest.param(_frame(b"a", 2, fin=False) + _frame(b"b", 0, rsv1=True), True, 1002, id="rsv1-on-continuation"),
    pytest.param(_frame(b"", 9, rsv1=True), True, 1002, id="rsv1-on-ping"),
    pytest.param(_frame(_compress(b"\xff\xfe"), 1, rsv1=True), True, 1007, id="inflated-text-not-utf8"),
    pytest.param(_frame(_compress(bytes(300)), 2, rsv1=True), True, 1009, id="inflated-too-big"),
])
def test_parser_refuses(stream: bytes, inflater: bool, code: int) -> None:
    """Compressed frames where not allowed, bad inflated text and oversized inflated messages close with their code."""
    handler = _Handler()
    FrameParser(handler, 200, Inflater(Negotiated(), 200) if inflater else None).feed(stream)
    assert handler.failed is not None and handler.failed[0] == code
    assert handler.messages == []


# -- end to end, with the websockets client ---------------------------------------------------


def _router(**compression: Any) -> Any:
    return start_router(routes=["/e=echo:"], compression={"permessage_deflate": True, **compression},
                        limits={"max_message_size": 1024 * 1024})


def _echo_with_websockets(url: str, messages: list[Any], **kwargs: Any) -> tuple[str | None, list[Any]]:
    with connect(url, **kwargs) as ws:
        replies = []
        for message in messages:
            ws.send(message)
            replies.append(ws.recv(timeout=10))
        return ws.response.headers.get("Sec-WebSocket-Extensions"), replies


@pytest_twisted.inlineCallbacks
def test_websockets_client_negotiates_and_echoes():
    """The websockets client's default offer is accepted and compressed messages of both types come back whole."""
    router = _router()
    messages = ["text " * 1000, b"\x00\x01" * 5000, "", b"", "é" * 10]
    try:
        extensions, replies = yield in_thread(_echo_with_websockets, router.url + "/e", messages)
        assert extensions is not None and extensions.startswith("permessage-deflate")
        assert replies == messages
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_off_by_default():
    """Without the option the offer is refused and messages still flow uncompressed."""
    router = start_router(routes=["/e=echo:"])
    try:
        extensions, replies = yield in_thread(_echo_with_websockets, router.url + "/e", ["a"])
        assert extensions is None
        assert replies == ["a"]
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_client_no_context_takeover_is_asked_for():
    """client_no_context_takeover and client_max_window_bits are asked of a client whose offer allows them."""
    router = _router(client_no_context_takeover=True, client_max_window_bits=10)
    try:
        extensions, replies = yield in_thread(
            _echo_with_websockets, router.url + "/e", ["abc" * 300, "abc" * 300],
            extensions=[ClientPerMessageDeflateFactory(client_max_window_bits=True)])
        assert extensions is not None
        assert "client_no_context_takeover" in extensions and "client_max_window_bits=10" in extensions
        assert replies == ["abc" * 300, "abc" * 300]
    finally:
        yield router.stopService()


def _raw_exchange(port: int, messages: list[bytes]) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Offer permessage-deflate by hand, send each message compressed; return the response head and raw frames."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /e HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, data = data.split(b"\r\n\r\n", 1)
    frames = []
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    for message in messages:
        s.sendall(_frame((compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4], 2, rsv1=True))
        while True:
            if len(data) >= 4:  # the replies here are shorter than 65536 bytes
                length, start = data[1], 2
                if length == 126:
                    length, start = struct.unpack("!H", data[2:4])[0], 4
                if len(data) >= start + length:
                    frames.append((data[0], data[start:start + length]))
                    data = data[start + length:]
                    break
            data += s.recv(65536)
    s.close()
    return head, frames


@pytest.mark.parametrize("takeover", [True, False])
@pytest_twisted.inlineCallbacks
def test_server_compresses_with_or_without_context(takeover):
    """The router's frames carry RSV1 and inflate to the message; a repeat shrinks only with context takeover."""
    router = _router(server_no_context_takeover=not takeover)
    message = bytes(range(256)) * 8
    try:
        head, frames = yield in_thread(_raw_exchange, router.port_number, [message, message])
        assert b"permessage-deflate" in head
        reader = zlib.decompressobj(-15)
        for first, payload in frames:
            assert first == 0x80 | 0x40 | 0x2
            assert reader.decompress(payload + b"\x00\x00\xff\xff") == message
        assert (len(frames[1][1]) < len(frames[0][1])) is takeover
    finally:
        yield router.stopService()


def _send_bomb(url: str) -> int | None:
    with connect(url, max_size=None) as ws:
        ws.send(bytes(20 * 1024 * 1024))  # compresses to about 20 KiB
        try:
            ws.recv(timeout=10)
        except ConnectionClosedError as e:
            return e.rcvd.code if e.rcvd else None
    return None


@pytest_twisted.inlineCallbacks
def test_compression_bomb_is_closed_with_1009():
    """A message that inflates past max_message_size closes the connection with 1009."""
    router = _router()
    try:
        code = yield in_thread(_send_bomb, router.url + "/e")
        assert code == 1009
    finally:
        yield router.stopService()
