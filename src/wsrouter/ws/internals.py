"""
Every reach into private Twisted, Autobahn and pyOpenSSL attributes, in one
place (and the list of those wsrouter/tlswrites.py's subclass of Twisted's
TLS protocol relies on).

A relay needs a few things neither library offers publicly: how much a
TCP transport still has queued (to watch a closing connection drain and to
write straight to an idle socket), the bytes an HTTP channel read past the
request it handed to a resource (frames a client sent without waiting for
the 101), the HTTP channel's producer registration (to hand the socket to
the WebSocket), and Autobahn's handshake buffer (bytes that followed the
handshake, and feeding the handshake in).  Each access is a small function
here, and C{tests/test_internals.py} checks on the installed versions that
every attribute named in L{PRIVATE_ATTRIBUTES} still exists and means what
it did, so an upgrade that changes them fails loudly instead of silently
losing data.

Functions on the per-message path (L{idle_tcp}) are plain attribute reads:
no extra calls or allocations.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Any

from twisted.internet import tcp

#: What this module reads or writes, by the class it belongs to (checked by
#: the tests against the installed libraries).
PRIVATE_ATTRIBUTES = {
    "twisted.internet.tcp.Connection": ("_tempDataLen", "dataBuffer", "offset", "_writeDisconnected", "socket"),
    "twisted.web.http.HTTPChannel": ("_networkProducer", "_dataBuffer", "_buffer"),
    "twisted.internet.base.BaseConnector": ("state", "transport"),
    "autobahn.websocket.protocol.WebSocketProtocol": ("data", "_dataReceived", "send_queue"),
    # wsrouter/tlswrites.py subclasses Twisted's TLS protocol, replacing its write and read loops.
    "twisted.protocols.tls.TLSMemoryBIOProtocol": (
        "_tlsConnection", "_appSendBuffer", "_lostTLSConnection", "_aborted", "_producer", "_bufferedWrite",
        "_tlsShutdownFinished", "_shutdownTLS", "_flushSendBIO", "_flushReceiveBIO", "_write"),
    "OpenSSL.SSL.Connection": ("_ssl", "_from_ssl"),
    # wsrouter/reactor.py subclasses Twisted's epoll reactor, replacing its dispatch (doPoll, _doReadOrWrite).
    "twisted.internet.epollreactor.EPollReactor": (
        "_poller", "_selectables", "_reads", "_disconnectSelectable", "_doReadOrWrite",
        "_POLL_DISCONNECTED", "_POLL_IN", "_POLL_OUT"),
    "twisted.internet.posixbase": ("_NO_FILEDESC",),
    # The HTTP client's per-connection factory (a token API lookup), made quiet.
    "twisted.web.client.HTTPConnectionPool": ("_factory",),
}

_DIRECT = (tcp.Server, tcp.Client)


# -- Twisted TCP transports ----------------------------------------------------------


def idle_tcp(transport: Any) -> bool:
    """A plain TCP transport with nothing queued and no close under way (per message: kept cheap)."""
    return (
        type(transport) in _DIRECT
        and not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not getattr(transport, "TLS", False)
    )


def queued_bytes(transport: Any) -> int:
    """
    Bytes still on their way to the peer: in the Twisted transport's queue
    and, on Linux, in the kernel's send queue (0 where it cannot tell).
    """
    try:
        queued = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return 0
    return int(queued) + _kernel_queue(transport)


def _kernel_queue(transport: Any) -> int:
    sock = getattr(transport, "socket", None)
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


def forget_transport(connector: Any) -> None:
    """
    A client connector whose connection is lost lets go of its transport
    (which points back at the connector): the pair is then freed by
    reference counting instead of waiting for the garbage collector.
    """
    if getattr(connector, "state", None) == "disconnected":
        connector.transport = None


# -- twisted.web's HTTP channel --------------------------------------------------------


def channel_producer_holder(channel: Any, transport: Any) -> Any:
    """
    What the HTTP channel registered itself with as the transport's producer
    (a TLS wrapper's own producer, or the transport itself): it must
    unregister before the WebSocket can register the bridge's.
    """
    return getattr(channel, "_networkProducer", transport)


def channel_unread(channel: Any) -> bytes:
    """
    Bytes the HTTP channel holds beyond the request being handled (frames a
    client sent without waiting for the 101): they belong to the WebSocket.
    """
    held = b"".join(getattr(channel, "_dataBuffer", None) or ())
    rest = getattr(channel, "_buffer", b"")
    return held + (rest if isinstance(rest, bytes) else b"")


# -- Autobahn's WebSocket protocol -----------------------------------------------------


def take_after_handshake(protocol: Any) -> bytes:
    """The bytes Autobahn buffered after the opening handshake; they are the parser's now."""
    leftover: bytes = protocol.data
    protocol.data = b""
    return leftover


def autobahn_data_received(protocol: Any, data: bytes) -> None:
    """Feed bytes to Autobahn's own handshake processing."""
    protocol._dataReceived(data)


def negotiated_deflate(protocol: Any) -> tuple[bool, bool, int, int] | None:
    """
    The permessage-deflate parameters Autobahn agreed in the handshake, as
    (server_no_context_takeover, client_no_context_takeover,
    server_max_window_bits, client_max_window_bits), or C{None} if not in use.
    Autobahn keeps them on its private C{_perMessageCompress}.
    """
    pmce = getattr(protocol, "_perMessageCompress", None)
    if pmce is None or getattr(pmce, "EXTENSION_NAME", None) != "permessage-deflate":
        return None
    return (bool(pmce.server_no_context_takeover), bool(pmce.client_no_context_takeover),
            int(pmce.server_max_window_bits), int(pmce.client_max_window_bits))


#: What Autobahn keeps on a protocol from the opening handshake and never
#: reads once the connection is open (the raw request and answer, the
#: parsed headers and query, the offers): about 1.5 KiB per held connection.
HANDSHAKE_ONLY = ("http_request_data", "http_response_data", "http_status_line", "http_headers",
                  "http_request_path", "http_request_params", "http_request_host", "websocket_protocols",
                  "websocket_extensions", "websocket_origin")


class SendQueue(list[Any]):
    """
    Autobahn's queue of writes (used only for its synchronous and chopped
    sends, which the relay never asks for) as a list: an empty deque holds
    a 640-byte block, an empty list 56 bytes.
    """

    def popleft(self) -> Any:
        return self.pop(0)


def drop_handshake_state(protocol: Any) -> None:
    """
    Forget L{HANDSHAKE_ONLY} on an open connection, make an empty send
    queue a small L{SendQueue}, and rebuild its C{__dict__} at its new size
    (a dict never shrinks when keys go).
    """
    state = protocol.__dict__
    for name in HANDSHAKE_ONLY:
        state.pop(name, None)
    if not state.get("send_queue", True):
        state["send_queue"] = SendQueue()
    protocol.__dict__ = dict(state)


def release_closed_future(protocol: Any) -> None:
    """
    Autobahn fires a closed connection's C{is_closed} Deferred with the
    protocol itself, which then holds itself through it: a reference cycle
    left for the garbage collector.  Once fired, its result is dropped (a
    callback added later gets C{None}; the router adds none).
    """
    closed = protocol.__dict__.get("is_closed")
    if closed is not None and getattr(closed, "called", False) and getattr(closed, "result", None) is protocol:
        closed.result = None


# -- pyOpenSSL connections -----------------------------------------------------------


def whole_ssl_writes(connection: Any) -> None:
    """
    Turn off pyOpenSSL's partial writes on C{connection} (an
    C{OpenSSL.SSL.Connection} on memory BIOs): one C{send} then writes every
    record of its data into the BIO, where it would stop after one 16 KiB
    record (a socket BIO could block; a memory BIO cannot).
    """
    from OpenSSL._util import lib  # pyOpenSSL's cffi binding: no public way to clear a mode

    lib.SSL_clear_mode(connection._ssl, lib.SSL_MODE_ENABLE_PARTIAL_WRITE)


def bio_read_into(connection: Any, buffer: memoryview) -> int:
    """
    Move what OpenSSL wrote into C{connection}'s outgoing memory BIO into
    C{buffer} (at most its size); the byte count, 0 if it was empty.
    pyOpenSSL's C{bio_read} copies twice (into a fresh C buffer, then into
    new bytes); this copies once, into memory that is reused.
    """
    from OpenSSL._util import ffi, lib

    with ffi.from_buffer(buffer, require_writable=True) as target:
        count: int = lib.BIO_read(connection._from_ssl, target, len(buffer))
    return max(count, 0)


# -- twisted.web's HTTP client ---------------------------------------------------------


def quiet_http_pool(reactor: Any) -> Any:
    """
    A non-persistent C{HTTPConnectionPool} for C{Agent} whose connections do
    not log "Starting factory" and "Stopping factory" lines (two info lines
    per token API lookup otherwise): Twisted offers no public switch for its
    factory's C{noisy}.
    """
    from twisted.web.client import HTTPConnectionPool

    pool: Any = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = type("QuietHTTP11ClientFactory", (pool._factory,), {"noisy": False})
    return pool
