"""
The TLS listener's protocol: Twisted's memory-BIO TLS with leaner write and
read paths.

Twisted's L{TLSMemoryBIOProtocol} encrypts a write 16 KiB at a time: a
slice, one C{SSL_write}, one C{bio_read} (two copies) and one queued
C{transport.write} per TLS record, each a Python call or three, and the
socket is written on the reactor's next turn; a relay writing 256 KiB
messages spent more in that loop than in the cipher.  L{TlsServerProtocol}
hands each write to OpenSSL at once (partial writes off: one C{SSL_write}
puts every record of it into the memory BIO; writes over L{WRITE_SLICE} go
in slices of that size), copies the records once into a buffer it reuses,
and sends them from there when the socket has nothing queued (Twisted's
queue takes the rest, so its producer pausing holds).  A frame header and
its payload (C{writeSequence}) are not joined.  On the way in, the records
one socket read decrypts to reach the protocol as one piece.  Everything
else -- the handshake, SNI, client certificates, close_notify, producers --
is Twisted's.  The private names this relies on are listed in
L{wsrouter.ws.internals.PRIVATE_ATTRIBUTES} and checked by the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from wsrouter.ws.internals import bio_read_into, whole_ssl_writes
from wsrouter.ws.writes import write_through

#: Bytes a TLS record adds to its payload, at most (header, explicit IV, MAC or tag, padding).
RECORD_OVERHEAD = 5 + 16 + 64 + 256
#: The largest TLS record payload.
RECORD_PAYLOAD = 16384
#: Cleartext encrypted before the records go to the socket: a larger write
#: goes out in pieces of this size, so the memory BIO and the copies out of
#: it stay this small whatever the message size.
WRITE_SLICE = 256 * 1024


#: Where the records of one write are taken out of OpenSSL's memory BIO (one
#: for the process: each write empties it before the next can start).
_SCRATCH = memoryview(bytearray(WRITE_SLICE + (WRITE_SLICE // RECORD_PAYLOAD + 1) * RECORD_OVERHEAD))


class TlsServerProtocol(TLSMemoryBIOProtocol):
    """A server-side TLS connection whose writes go to OpenSSL and the socket whole."""

    # Twisted's, unannotated there (its private ones are listed in ws/internals.py and checked).
    transport: Any
    _tlsConnection: Any
    _bufferedWrite: Any
    _tlsShutdownFinished: Any
    _shutdownTLS: Any
    _flushSendBIO: Any
    _producer: Any

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)  # type: ignore[no-untyped-call]
        if self._tlsConnection is not None:
            whole_ssl_writes(self._tlsConnection)

    @property
    def bufferSize(self) -> int:
        """The socket's read size: a protocol asking for larger reads gets them from the socket beneath."""
        return int(getattr(self.transport, "bufferSize", 0))

    @bufferSize.setter
    def bufferSize(self, size: int) -> None:
        if self.transport is not None:
            self.transport.bufferSize = size

    def writeSequence(self, iovec: Any) -> None:
        """
        A frame header and its payload go to OpenSSL without being joined:
        the header with the payload's first record's worth (a small copy,
        so every record is full), then the rest of the payload in place.
        """
        parts = iovec if isinstance(iovec, (list, tuple)) else list(iovec)
        if len(parts) != 2 or len(parts[0]) >= RECORD_PAYLOAD or (self.disconnecting and self._producer is None):
            self.write(b"".join(parts))  # type: ignore[no-untyped-call]
            return
        head, body = parts
        cut = RECORD_PAYLOAD - len(head)
        self._encrypt((head + body[:cut], memoryview(body)[cut:]) if len(body) > cut else (head + body,))

    def _write(self, data: bytes) -> None:
        if len(data) > WRITE_SLICE or self._appSendBuffer or self._lostTLSConnection or not data:
            self._encrypt((data,))
            return
        # A small write (every message of an interactive session): _encrypt's work, unrolled.
        try:
            sent = self._tlsConnection.send(data)
        except WantReadError:
            self._bufferedWrite(data)
            return
        except Error:
            self._tlsShutdownFinished(Failure())
            return
        self._send_records()
        if sent < len(data):  # partial writes on: a record per send
            self._encrypt((memoryview(data)[sent:],))

    def _encrypt(self, chunks: tuple[bytes | memoryview, ...]) -> None:
        """Encrypt C{chunks} in order into the memory BIO, sending the records every L{WRITE_SLICE}."""
        if self._lostTLSConnection:
            return
        if self._appSendBuffer:  # earlier writes wait for the handshake: keep the order
            self._bufferedWrite(b"".join(chunks))
            return
        size = 0
        for i, at, piece in _slices(chunks):
            done = self._encrypt_one(piece)
            if done is None:
                return
            size += done
            if done < len(piece):
                # The handshake is not done: Twisted's queue retries the
                # rest once the peer's answer arrives.
                self._bufferedWrite(b"".join((chunks[i][at + done:], *chunks[i + 1:])))
                break
            if size >= WRITE_SLICE:
                self._send_records()
                size = 0
        if size:
            self._send_records()

    def _encrypt_one(self, chunk: bytes | memoryview) -> int | None:
        """
        How much of C{chunk} OpenSSL took: all of it (in one call with
        partial writes off, a record per call if they were on), less if the
        handshake is not done; C{None} if TLS failed (the connection is
        then being closed).
        """
        done = 0
        while done < len(chunk):
            try:
                done += self._tlsConnection.send(memoryview(chunk)[done:] if done else chunk)
            except WantReadError:
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                return None
        return done

    def _send_records(self) -> None:
        """
        Send what OpenSSL wrote into the memory BIO: copied once into a
        buffer all connections share (the reactor runs one write at a
        time), sent from there when the socket has nothing queued, and only
        what the socket did not take copied again, into Twisted's queue.
        """
        view = _SCRATCH
        while True:
            count = bio_read_into(self._tlsConnection, view)
            if not count:
                return
            write_through(self.transport, view[:count])
            if count < len(view):
                return

    def _flushReceiveBIO(self) -> None:
        """
        Twisted's, but what one read from the socket decrypts to goes to
        the protocol as one piece rather than one per TLS record.
        """
        connection = self._tlsConnection
        pieces: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                pieces.append(connection.recv(RECORD_PAYLOAD))
            except WantReadError:
                break
            except ZeroReturnError:  # the peer's close_notify: nothing more comes
                self._deliver(pieces)
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:  # e.g. a failed renegotiation: TLS cannot go on
                failure = Failure()
                self._deliver(pieces)
                self._tlsShutdownFinished(failure)
        self._deliver(pieces)
        self._flushSendBIO()

    def _deliver(self, pieces: list[bytes]) -> None:
        if pieces and not self._aborted:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            pieces.clear()
            ProtocolWrapper.dataReceived(self, data)
        pieces.clear()


def _slices(chunks: tuple[bytes | memoryview, ...]) -> Iterator[tuple[int, int, bytes | memoryview]]:
    """C{(index, offset, piece)}: C{chunks} cut into pieces of at most L{WRITE_SLICE} (views, not copies)."""
    for i, chunk in enumerate(chunks):
        if len(chunk) <= WRITE_SLICE:
            if chunk:
                yield i, 0, chunk
            continue
        view = memoryview(chunk)
        for at in range(0, len(chunk), WRITE_SLICE):
            yield i, at, view[at:at + WRITE_SLICE]
