"""
permessage-deflate (RFC 7692): the offer decision at the handshake, and the
per-connection compressor and bounded decompressor used by the router's own
frame parser and writer.

Autobahn negotiates (L{accept_offer} is the factory's
C{perMessageCompressionAccept}); wsrouter then parses and writes frames
itself, so the negotiated parameters are read off the protocol once it is
open (L{wsrouter.ws.internals.negotiated_deflate}) and turned into a
L{Deflate} pair.

Decompression is bounded: output is produced at most L{INFLATE_STEP} bytes
at a time and every byte counts against the message size limit, so a
compression bomb is cut with 1009 after at most the limit, never buffered.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from attrs import frozen
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

from wsrouter.config import Compression

#: What RFC 7692 7.2.1 says to strip from, and 7.2.2 to append to, a message.
_TAIL = b"\x00\x00\xff\xff"
#: Most bytes one decompression step produces.
INFLATE_STEP = 64 * 1024


@frozen
class Negotiated:
    """The parameters in force on one connection (RFC 7692 7.1), windows in bits."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15


#: One entry of Autobahn's parsed C{Sec-WebSocket-Extensions}: the name and each parameter's values.
ExtensionOffer = tuple[str, dict[str, list[Any]]]


def usable_offers(offers: Sequence[ExtensionOffer], settings: Compression) -> list[ExtensionOffer]:
    """
    The client's extension offers worth weighing, in its order: none when
    permessage-deflate is off; when on, the permessage-deflate offers whose
    parameters can be met.

    Autobahn fails the whole handshake with 400 on the first offer whose
    parameters it cannot parse (C{server_max_window_bits=8}, an unknown
    parameter, a repeated one), and on offers for extensions it knows but
    the router never enables; RFC 7692 (5, 7.1.2.2) has the server decline
    such an offer and weigh the next, or answer without the extension.
    8 is a legal window that zlib cannot produce for raw deflate, so an
    offer asking for it is declined too.
    """
    if not settings.permessage_deflate:
        return []
    usable = []
    for name, params in offers:
        if name != PerMessageDeflateOffer.EXTENSION_NAME:
            continue
        try:
            PerMessageDeflateOffer.parse(params)  # type: ignore[no-untyped-call, unused-ignore]
        except Exception:  # Autobahn raises a plain Exception for any bad parameter
            continue
        usable.append((name, params))
    return usable


def offer_acceptor(settings: Compression) -> Callable[[Sequence[Any]], Any]:
    """
    The factory's C{perMessageCompressionAccept}: the first permessage-deflate
    offer that can be met with C{settings} is accepted, none when off.
    """

    def accept(offers: Sequence[Any]) -> PerMessageDeflateOfferAccept | None:
        if not settings.permessage_deflate:
            return None
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return accept_offer(offer, settings)
        return None

    return accept


def accept_offer(offer: PerMessageDeflateOffer, settings: Compression) -> PerMessageDeflateOfferAccept:
    """Meet C{offer} with C{settings}: the client's requests win where they are stricter."""
    window = settings.server_max_window_bits
    if offer.request_max_window_bits:
        window = min(window, offer.request_max_window_bits)
    request_window = settings.client_max_window_bits if settings.client_max_window_bits < 15 else 0
    return PerMessageDeflateOfferAccept(
        offer,
        request_no_context_takeover=settings.client_no_context_takeover and offer.accept_no_context_takeover,
        request_max_window_bits=request_window if offer.accept_max_window_bits else 0,
        no_context_takeover=settings.server_no_context_takeover or offer.request_no_context_takeover,
        window_bits=window,
    )


class Deflater:
    """Compresses whole messages to the client (RFC 7692 7.2.1)."""

    def __init__(self, negotiated: Negotiated, level: int = zlib.Z_DEFAULT_COMPRESSION):
        self._bits = negotiated.server_max_window_bits
        self._reset = negotiated.server_no_context_takeover
        self._level = level
        self._compressor: Any = None

    def compress(self, payload: bytes) -> bytes:
        """One message's payload, compressed, its final empty block's tail removed."""
        if self._compressor is None or self._reset:
            self._compressor = zlib.compressobj(self._level, zlib.DEFLATED, -self._bits)
        data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if data.endswith(_TAIL):
            data = data[:-4]
        return data or b"\x00"


class InflateError(Exception):
    """A compressed message cannot be used; C{code} is the close code (1007 or 1009)."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Inflater:
    """
    Decompresses client messages as their frames arrive, bounded.

    @param max_size: the largest inflated message in bytes; 0 for none.
    """

    def __init__(self, negotiated: Negotiated, max_size: int = 0):
        self._bits = negotiated.client_max_window_bits
        self._reset = negotiated.client_no_context_takeover
        self._max = max_size
        self._decompressor: Any = None
        self._size = 0

    def begin(self) -> None:
        """A compressed message starts."""
        if self._decompressor is None or self._reset:
            self._decompressor = zlib.decompressobj(-self._bits)
        self._size = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """
        The inflated bytes C{data} gives, in steps of at most L{INFLATE_STEP}.

        @raise InflateError: 1009 once the message passes the limit, 1007
            for data that is not deflate.
        """
        decompressor = self._decompressor
        while data:
            try:
                out = decompressor.decompress(data, INFLATE_STEP)
            except zlib.error as e:
                raise InflateError(1007, f"compressed message cannot be inflated: {e}") from None
            data = decompressor.unconsumed_tail
            if out:
                self._size += len(out)
                if self._max and self._size > self._max:
                    raise InflateError(1009, f"inflated message larger than {self._max} bytes")
                yield out
            elif data:
                break  # no progress (input after the end of the stream): left over, ignored
        if decompressor.unused_data:
            raise InflateError(1007, "data after the end of a compressed message")

    def end(self) -> Iterator[bytes]:
        """The message is complete: the inflated rest (RFC 7692 7.2.2)."""
        if not self._decompressor.eof:  # a message may end with a final block (RFC 7692 7.2.3.3)
            yield from self.feed(_TAIL)
        if self._decompressor.eof:
            self._decompressor = None  # it ended with a final block: the next message starts anew
