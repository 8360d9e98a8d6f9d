"""
The frame parser's inner loops, compiled when possible.

Two functions, each with a pure-Python definition here and a C twin in the
optional extension C{wsrouter.ws._frames} (built by C{make install} and by
the wheel build where a compiler and Python's headers are available):

  - L{scan_binary}: the unmasked payloads of all the whole, small-header
    binary frames a read carries, in one call (the commonest traffic of a
    relay: many small binary messages, whole, many to a read);
  - L{unmask}: a payload XOR its 4-byte mask.

The compiled pair is used when it imports, unless C{WSROUTER_PURE_FRAMES=1}
is in the environment at import (for tests and comparisons); L{COMPILED}
says which.  Both behave the same (the property tests run against both).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from autobahn.websocket.xormasker import create_xor_masker  # type: ignore[attr-defined, unused-ignore]

#: First byte of a whole binary frame: FIN, no RSV bits, opcode 2.
WHOLE_BINARY = 0x82

#: From this size on, pure-Python unmasking uses Autobahn's vectorised masker;
#: below it, one big-integer XOR, which costs less per call.
_VECTOR_UNMASK_FROM = 1024


def py_unmask(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """C{data} XOR the 4-byte C{mask}, starting C{offset} bytes into the frame's payload."""
    shift = offset & 3
    if shift:
        mask = mask[shift:] + mask[:shift]
    n = len(data)
    if n >= _VECTOR_UNMASK_FROM:
        return create_xor_masker(mask, n).process(data)  # type: ignore[no-any-return]
    if not n or mask == b"\0\0\0\0":
        return bytes(data)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def py_scan_binary(data: bytes, position: int, limit: int) -> tuple[list[bytes], int]:
    """
    The unmasked payloads of the consecutive frames from C{position} on that
    are whole (entirely in C{data}), masked, unfragmented binary frames
    (first byte 0x82) of at most C{limit} bytes (0: any size), and the
    position after the last of them.  Stops at the first frame that is
    anything else, leaving it to the general parser.
    """
    payloads: list[bytes] = []
    end = len(data)
    while end - position >= 6 and data[position] == WHOLE_BINARY:
        second = data[position + 1]
        if not second & 0x80:
            break
        length = second & 0x7F
        start = position + 6
        if length == 126:
            start = position + 8
            if end < start:
                break
            length = int.from_bytes(data[position + 2:position + 4], "big")
        elif length == 127:
            start = position + 14
            if end < start or data[position + 2] & 0x80:
                break
            length = int.from_bytes(data[position + 2:position + 10], "big")
        if (limit and length > limit) or end - start < length:
            break
        payloads.append(py_unmask(data[start:start + length], data[start - 4:start]))
        position = start + length
    return payloads, position


scan_binary: Callable[[bytes, int, int], tuple[list[bytes], int]] = py_scan_binary
unmask: Callable[..., bytes] = py_unmask
COMPILED = False

if os.environ.get("WSROUTER_PURE_FRAMES", "") != "1":
    try:
        from wsrouter.ws import _frames  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        scan_binary = _frames.scan_binary
        unmask = _frames.unmask
        COMPILED = True
