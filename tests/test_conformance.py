"""A quick subset of Autobahn|Testsuite against the echo: route and the framed relay (make conformance runs it all)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WSTEST = ROOT / ".cache" / "autobahn-py27" / "bin" / "wstest"
#: Framing, pings, reserved bits and opcodes, fragmentation, UTF-8, the
#: basic closing cases (the ones the router's frame parser decides), and a
#: few permessage-deflate ones.  The relay route waits out Autobahn's
#: timeouts wherever a stream cuts messages differently: too slow for here.
QUICK_CASES = "1.*,2.*,3.*,4.*,5.*,6.1.*,6.3.*,6.4.*,7.1.*,7.3.*,12.1.1,12.1.2,13.1.1,13.2.1"

pytestmark = pytest.mark.skipif(not WSTEST.exists(), reason="Autobahn|Testsuite not installed (make conformance-setup)")


def test_quick_subset_has_no_failed_case(tmp_path: Path) -> None:
    """Autobahn's fuzzingclient finds no FAILED or UNIMPLEMENTED case on the echo route, deflate on."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "conformance" / "run.py"), "--cases", QUICK_CASES,
         "--agents", "echo", "--outdir", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    echo = summary["wsrouter-echo"]
    assert echo["total"] >= 89
    assert echo["counts"].get("FAILED", 0) == 0, echo["not_ok"]
    assert echo["counts"].get("UNIMPLEMENTED", 0) == 0, echo["not_ok"]
    assert echo["counts"].get("OK", 0) >= echo["total"] - 3, echo["not_ok"]


#: Message types and boundaries, fragmentation, UTF-8 (6.4: the whole
#: message is checked before any of it reaches the target), a bulk case and
#: one deflate case each way, on the framed (length:u32:typed) relay.
FRAMED_CASES = "1.*,5.*,6.4.*,9.1.1,12.1.1,13.1.1"


def test_framed_relay_subset_keeps_every_message(tmp_path: Path) -> None:
    """Through a TCP echo with length:u32:typed framing, Autobahn finds no FAILED case: messages and types come back."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "conformance" / "run.py"), "--cases", FRAMED_CASES,
         "--agents", "framed", "--require-clean", "framed", "--outdir", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    framed = json.loads((tmp_path / "summary.json").read_text())["wsrouter-framed"]
    assert framed["total"] == 43
    assert framed["counts"].get("FAILED", 0) == 0, framed["not_ok"]
    assert [case["case"] for case in framed["not_ok"]] in ([], ["5.15"]), framed["not_ok"]


def test_relay_rescoring_forgives_only_types_and_boundaries() -> None:
    """A relay echo that came back binary, or cut in pieces, where one text message was expected is STREAM-OK."""
    from conformance.run import stream_equivalent

    def report(received: list[object]) -> dict[str, object]:
        return {"behaviorClose": "OK", "expected": {"OK": [["message", "Hello, world!", False]], "NON-STRICT": []},
                "received": received,
                "wirelog": [["TF", [13, "x"], 1], ["TF", [13, "y"], 1], ["RF", [13, "x"], 1]]}

    assert stream_equivalent(report([["message", "Hello, world!", True]]))
    assert stream_equivalent(report([["message", "Hello", True], ["message", ", world", True], ["message", "!", True]]))
    assert not stream_equivalent(report([["message", "Hello, world?", True]]))
    assert not stream_equivalent({**report([["message", "Hello, world!", True]]), "behaviorClose": "UNCLEAN"})
