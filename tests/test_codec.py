"""
The frame codec's two implementations (wsrouter.ws.codec): the compiled
extension wsrouter.ws._frames and the pure-Python fallback must agree on
every input; the parser uses the compiled one when it is built; the bridge
relays a run of whole binary messages as one write only where that changes
nothing.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import struct
import subprocess
import sys
import sysconfig
from importlib.machinery import ExtensionFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_bridge import FakeLink, FakeRecorder, FakeSocket
from tests.test_frames import frame
from wsrouter.bridge import Bridge
from wsrouter.framing import BinaryFramer
from wsrouter.ws import codec

SRC = Path(__file__).resolve().parent.parent / "src"
SOURCE = SRC / "wsrouter" / "ws" / "_frames.c"

try:
    from wsrouter.ws import _frames  # type: ignore[attr-defined]
except ImportError:
    _frames = None

#: The implementations every property runs against; the compiled one only where it is built.
IMPLEMENTATIONS = [
    pytest.param((codec.py_scan_binary, codec.py_unmask), id="pure"),
    pytest.param(
        (getattr(_frames, "scan_binary", None), getattr(_frames, "unmask", None)), id="compiled",
        marks=pytest.mark.skipif(_frames is None, reason="wsrouter.ws._frames not built (make install builds it)"),
    ),
]


def reference_scan(data: bytes, position: int, limit: int) -> tuple[list[bytes], int]:
    """scan_binary by the RFC's definition, byte by byte, for the properties to compare with."""
    payloads = []
    while True:
        rest = data[position:]
        if len(rest) < 2 or rest[0] != 0x82 or not rest[1] & 0x80:
            break
        length, head = rest[1] & 0x7F, 2
        if length == 126:
            if len(rest) < 4:
                break
            length, head = struct.unpack("!H", rest[2:4])[0], 4
        elif length == 127:
            if len(rest) < 10 or rest[2] & 0x80:
                break
            length, head = struct.unpack("!Q", rest[2:10])[0], 10
        if len(rest) < head + 4 + length or (limit and length > limit):
            break
        mask = rest[head:head + 4]
        body = rest[head + 4:head + 4 + length]
        payloads.append(bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
        position += head + 4 + length
    return payloads, position


_FRAME = st.one_of(
    st.builds(lambda p, m, form: frame(2, p, mask=m, length_form=form),
              st.binary(max_size=300), st.binary(min_size=4, max_size=4), st.sampled_from(["auto", "16", "64"])),
    st.builds(lambda p: frame(1, p), st.binary(max_size=20)),
    st.builds(lambda p: frame(2, p, fin=False), st.binary(max_size=20)),
    st.builds(lambda p: frame(9, p), st.binary(max_size=20)),
    st.builds(lambda p: frame(2, p, mask=None), st.binary(max_size=20)),
    st.builds(lambda p: frame(2, p, rsv=4), st.binary(max_size=20)),
    st.just(b"\x82\xff\x80\0\0\0\0\0\0\x01abcd"),  # a 64-bit length with its top bit set
    st.binary(max_size=12),  # anything at all
)


#: The scan_binary of each build (hypothesis's tests cannot be parametrized under pytest-twisted).
SCANS = [codec.py_scan_binary] + ([_frames.scan_binary] if _frames is not None else [])


@settings(max_examples=400, deadline=None)
@given(frames=st.lists(_FRAME, max_size=12), cut=st.integers(0, 2000), start=st.integers(0, 40),
       limit=st.sampled_from([0, 0, 1, 125, 126, 200, 65536]))
def test_scan_binary_matches_the_definition(frames: list[bytes], cut: int, start: int, limit: int) -> None:
    """scan_binary takes exactly the whole masked binary frames before the first other frame, in both builds."""
    data = b"".join(frames)
    data = data[:max(len(data) - cut, 0)] if cut % 3 else data  # a frame cut short, often
    position = min(start, len(data)) if start % 2 else 0
    expected = reference_scan(data, position, limit)
    for scan in SCANS:
        assert scan(data, position, limit) == expected, scan


# Every size in every length form that can say it (a 16-bit length stops at 65535).
SIZES_AND_FORMS = [(size, form) for size in (0, 1, 125, 126, 127, 65535, 65536) for form in ("auto", "16", "64")
                   if not (form == "16" and size > 65535)]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("size", "form"), SIZES_AND_FORMS)
def test_scan_binary_at_the_limit_and_length_forms(impl: Any, size: int, form: str) -> None:
    """A frame of exactly the limit is taken and one byte over it is not, in every length form and both builds."""
    scan, _ = impl
    payload = os.urandom(size)
    data = frame(2, payload, mask=os.urandom(4), length_form=form)
    assert scan(data, 0, size) == ([payload], len(data))
    assert scan(data, 0, 0) == ([payload], len(data))
    if size > 1:  # a limit of 0 is none
        assert scan(data, 0, size - 1) == ([], 0)
    assert scan(data[:-1], 0, 0) == ([], 0)  # one byte short: not whole


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("size", [0, 1, 3, 7, 8, 9, 125, 1023, 1024, 5000])
@pytest.mark.parametrize("offset", range(5))
def test_unmask_at_any_offset_and_size(impl: Any, size: int, offset: int) -> None:
    """unmask XORs with the mask from any offset into the frame, for bytes, bytearray and memoryview alike."""
    _, unmask = impl
    mask = os.urandom(4)
    data = os.urandom(size)
    expected = bytes(b ^ mask[(i + offset) % 4] for i, b in enumerate(data))
    assert unmask(data, mask, offset) == expected
    assert unmask(bytearray(data), mask, offset) == expected
    assert unmask(memoryview(data), mask, offset) == expected


@pytest.mark.skipif(_frames is None, reason="wsrouter.ws._frames not built (make install builds it)")
def test_compiled_functions_refuse_bad_arguments() -> None:
    """The compiled functions raise TypeError or ValueError for bad arguments, never crash."""
    with pytest.raises(TypeError):
        _frames.scan_binary(bytearray(b"\x82\x80abcd"), 0, 0)
    with pytest.raises(ValueError):
        _frames.scan_binary(b"abc", 4, 0)
    with pytest.raises(ValueError):
        _frames.scan_binary(b"abc", -1, 0)
    with pytest.raises(TypeError):
        _frames.scan_binary(b"abc", 0)
    with pytest.raises(ValueError):
        _frames.unmask(b"abc", b"abc")
    with pytest.raises(ValueError):
        _frames.unmask(b"abc", b"abcd", -1)
    with pytest.raises(TypeError):
        _frames.unmask("text", b"abcd")


def test_compiled_codec_is_used_when_built() -> None:
    """When the extension is built in the package, the parser uses it (so the bench measures the compiled path)."""
    built = sorted((SRC / "wsrouter" / "ws").glob("_frames*.so"))
    if not built:
        pytest.skip("wsrouter.ws._frames not built (make install builds it)")
    import wsrouter.ws.parser as parser

    assert _frames is not None, f"{built[0].name} is there but does not import"
    assert codec.COMPILED
    assert parser._scan_binary is _frames.scan_binary
    assert parser.unmask is _frames.unmask


def _codec_in_subprocess(env: dict[str, str]) -> str:
    code = "from wsrouter.ws import codec, parser; print(codec.COMPILED, parser._scan_binary.__module__)"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "PYTHONPATH": str(SRC)},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_pure_path_forced_by_environment() -> None:
    """WSROUTER_PURE_FRAMES=1 makes a process use the pure-Python codec even where the extension is built."""
    assert _codec_in_subprocess({"WSROUTER_PURE_FRAMES": "1"}) == "False wsrouter.ws.codec"
    if _frames is not None:
        assert _codec_in_subprocess({"WSROUTER_PURE_FRAMES": ""}) == "True wsrouter.ws._frames"


def test_c_source_compiles_cleanly_and_loads(tmp_path: Path) -> None:
    """_frames.c compiles with the Makefile's flags and no warning (-Werror), and the result scans frames."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    include = Path(sysconfig.get_paths()["include"])
    if compiler is None or not (include / "Python.h").exists():
        pytest.skip("no C compiler or no Python headers (tests/setup/system-deps.sh installs python3-dev)")
    target = tmp_path / "_frames.abi3.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{include}",
                    "-o", str(target), str(SOURCE)], check=True, timeout=120)
    loader = ExtensionFileLoader("_frames", str(target))
    spec = spec_from_loader("_frames", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    data = frame(2, b"one", mask=b"\x01\x02\x03\x04") + frame(2, b"") + frame(1, b"text")
    assert module.scan_binary(data, 0, 0) == ([b"one", b""], len(data) - 10)


# -- the bridge's side: a run of whole binary messages ------------------------------


def _zero() -> float:
    return 0.0


def _bridge(message_oriented: bool, recorder: bool = False, base64_mode: bool = False) -> tuple[Bridge, list[Any]]:
    events: list[Any] = []
    bridge = Bridge(FakeSocket(events), FakeLink(events, message_oriented), BinaryFramer(),
                    recorder=FakeRecorder() if recorder else None, base64_mode=base64_mode, clock=_zero)
    bridge.start()
    return bridge, events


def _one_by_one(bridge: Bridge, payloads: list[bytes]) -> None:
    for payload in payloads:
        bridge.message_begin(True)
        bridge.frame_data(payload)
        bridge.message_end()


@pytest.mark.parametrize("message_oriented", [False, True], ids=["stream", "messages"])
@pytest.mark.parametrize("recorder", [False, True], ids=["plain", "recorded"])
@pytest.mark.parametrize("base64_mode", [False, True], ids=["binary", "base64"])
@pytest.mark.parametrize("seed", range(6))
def test_binary_run_equals_one_message_at_a_time(message_oriented: bool, recorder: bool, base64_mode: bool,
                                                 seed: int) -> None:
    """A run of binary messages reaches the target, recorder and stats as the same messages one at a time would."""
    rng = random.Random(seed)
    payloads = [os.urandom(rng.choice((0, 1, 4, 8, 31, 200))) for _ in range(rng.randrange(1, 20))]
    if base64_mode:
        payloads = [base64.b64encode(p) for p in payloads]
    run, run_events = _bridge(message_oriented, recorder, base64_mode)
    run.binary_messages(payloads)
    single, single_events = _bridge(message_oriented, recorder, base64_mode)
    _one_by_one(single, payloads)

    def written(events: list[Any]) -> list[bytes]:
        writes = [e[1] for e in events if e[0] == "write"]
        return writes if message_oriented else [b"".join(writes)]

    assert written(run_events) == written(single_events)
    assert [e for e in run_events if e[0] != "write"] == [e for e in single_events if e[0] != "write"]
    assert run.stats == single.stats
    if recorder:
        assert run._recorder.client == single._recorder.client  # type: ignore[union-attr]


def test_binary_run_on_a_stream_link_is_one_write() -> None:
    """On a plain byte relay, a run of messages goes to the target as one write of their concatenation."""
    bridge, events = _bridge(message_oriented=False)
    bridge.binary_messages([b"one", b"", b"two", b"three"])
    assert [e for e in events if e[0] == "write"] == [("write", b"onetwothree")]
    assert bridge.stats.messages_from_client == 4
    assert bridge.stats.bytes_from_client == 11


def test_binary_run_after_refusal_writes_nothing() -> None:
    """Once the client was refused, a run of messages writes nothing to the target."""
    bridge, events = _bridge(message_oriented=False)
    bridge.refuse(1007, "bad")
    bridge.binary_messages([b"one", b"two"])
    assert [e for e in events if e[0] == "write"] == []
