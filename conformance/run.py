"""
Run Autobahn|Testsuite's fuzzingclient against wsrouter and summarise it.

Starts, all on loopback ports the system picks: a TCP echo server; a router
(C{python -m wsrouter}, with permessage-deflate on unless --no-deflate) with
an C{echo:} route at /echo and a relay route at /relay to that TCP echo (a
plain byte-stream relay with binary framing), and a message-preserving
relay at /framed to the same echo (C{length:u32:typed} framing: message
boundaries and types survive the byte stream, so no rescoring applies);
optionally Autobahn-Python's own echo server as a reference.  Then runs
C{wstest -m fuzzingclient} over the chosen cases, and prints the counts by
behaviour per agent and every case that is not OK.  Every process it
started is ended by its PID.

Usage: python conformance/run.py [--cases 1.*,2.*] [--agents echo,relay,framed,autobahn]
           [--wstest PATH] [--outdir DIR] [--markdown FILE] [--require-clean AGENTS]

Exit status: 0, or 1 when an agent named by --require-clean has a FAILED case.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WSTEST = ROOT / ".cache" / "autobahn-py27" / "bin" / "wstest"
AGENT_PATHS = {"echo": "/echo", "relay": "/relay", "framed": "/framed"}
#: Behaviours Autobahn reports, best first.
#: STREAM-OK and STREAM-CUT are this script's own (see L{rescore_relay}):
#: relay cases Autobahn FAILED only for message types or boundaries, which a
#: byte-stream relay cannot keep.
BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "STREAM-OK", "STREAM-CUT", "FAILED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until C{port} accepts, or fail if C{process} exits or C{timeout} seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass  # the router dropped the connection (a case that ends in a failure close)


class TcpEcho(socketserver.ThreadingTCPServer):
    """A byte-stream echo server on a loopback port, in threads of this process."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.port = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def start(args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"})
    try:
        wait_for_port(port, process)
    except RuntimeError:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def run_suite(wstest: Path, outdir: Path, servers: list[dict[str, str]], cases: list[str],
              exclude: list[str], exclude_for: dict[str, list[str]]) -> dict[str, Any]:
    """Run the fuzzingclient; return its index (agent -> case id -> result)."""
    reports = outdir / "reports"
    spec = {"outdir": str(reports), "servers": servers, "cases": cases, "exclude-cases": exclude,
            "exclude-agent-cases": exclude_for}
    spec_file = outdir / "fuzzingclient.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    with (outdir / "wstest.log").open("wb") as log:
        subprocess.run([str(wstest), "-m", "fuzzingclient", "-s", str(spec_file)], cwd=outdir,
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    index: dict[str, Any] = json.loads((reports / "index.json").read_text())
    return index


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


_DATA_OPCODES = (0, 1, 2)


def stream_equivalent(report: dict[str, Any]) -> bool:
    """
    Whether a case a byte-stream relay FAILED kept all it can keep: the
    payload byte count sent in data frames came back in data frames, the
    control events expected (pongs) came, and the close was OK.  Message
    types and boundaries are what it cannot keep; Autobahn's report holds
    payloads only up to 64 bytes, so the bytes themselves are not compared
    here (the echo route checks them, and tests/test_relay.py does).
    """
    if report.get("behaviorClose") not in ("OK", "INFORMATIONAL"):
        return False
    wirelog = report.get("wirelog") or []
    sent = sum(e[1][0] for e in wirelog if e[0] == "TF" and e[2] in _DATA_OPCODES)
    received = sum(e[1][0] for e in wirelog if e[0] == "RF" and e[2] in _DATA_OPCODES)
    controls = [e[0] for e in report.get("received", []) if e[0] != "message"]
    expected = [[e[0] for e in outcome if e[0] != "message"] for outcome in report.get("expected", {}).values()]
    if sent == received and (not expected or controls in expected):
        return True
    # A frame the router refused (a protocol violation) is sent but never
    # relayed: then what came back must be one of the outcomes Autobahn
    # expects, but for the message types and boundaries a byte stream
    # cannot keep.
    received_events = _as_stream(report.get("received", []))
    return any(received_events == _as_stream(outcome) for outcome in report.get("expected", {}).values())


def _as_stream(events: list[Any]) -> list[Any]:
    """Events with each run of messages joined into one payload, types left out (what a byte relay keeps)."""
    stream: list[Any] = []
    for event in events:
        if event and event[0] == "message":
            if stream and stream[-1][0] == "bytes":
                stream[-1][1] += str(event[1])
            else:
                stream.append(["bytes", str(event[1])])
        else:
            stream.append(event)
    return stream


#: Autobahn's own words when the first message echoed back already differs
#: in type or length (its bulk cases 9.*, 12.*, 13.* stop there).
_CUT = re.compile(r"type differs|type or length differs|length differs|but got binary|but got \d+")


def rescore_relay(results: dict[str, Any], reports: Path) -> None:
    """
    Relabel the relay's FAILED cases that failed only on what a byte stream
    cannot keep: STREAM-OK when the bytes are all accounted for, STREAM-CUT
    when Autobahn stopped at the first message because it came back binary
    or cut at another boundary (so the bytes after it were not compared).
    """
    for result in results.values():
        if result["behavior"] == "FAILED":
            report = json.loads((reports / result["reportfile"]).read_text())
            if stream_equivalent(report):
                result["behavior"] = "STREAM-OK"
            elif _CUT.search(report.get("result", "")) and report.get("behaviorClose") in ("OK", "INFORMATIONAL"):
                result["behavior"] = "STREAM-CUT"


def summarise(index: dict[str, Any]) -> dict[str, Any]:
    """Per agent: counts by behaviour and the non-OK cases, sorted by case id."""
    summary: dict[str, Any] = {}
    for agent, results in index.items():
        counts = collections.Counter(result["behavior"] for result in results.values())
        not_ok = [
            {"case": case, "behavior": r["behavior"], "behaviorClose": r["behaviorClose"],
             "remoteCloseCode": r.get("remoteCloseCode")}
            for case, r in sorted(results.items(), key=lambda item: case_key(item[0]))
            if r["behavior"] not in ("OK", "STREAM-OK", "STREAM-CUT")
            or r["behaviorClose"] not in ("OK", "INFORMATIONAL")
        ]
        summary[agent] = {"total": len(results), "counts": dict(counts), "not_ok": not_ok}
        for label in ("STREAM-OK", "STREAM-CUT"):
            summary[agent][label] = sorted((c for c, r in results.items() if r["behavior"] == label), key=case_key)
    return summary


def compress_ranges(cases: list[str]) -> list[str]:
    """Case ids with runs inside one group written as ranges: 9.1.1-9.1.6."""
    out: list[str] = []
    for case in cases:
        group, _, number = case.rpartition(".")
        if out and group and out[-1].rpartition("-")[2].rpartition(".")[0] == group:
            last = out[-1].rpartition("-")[2]
            if int(last.rpartition(".")[2]) + 1 == int(number):
                out[-1] = out[-1].partition("-")[0] + "-" + case
                continue
        out.append(case)
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: a counts table, then each agent's non-OK cases, grouped."""
    lines = ["| agent | cases | " + " | ".join(BEHAVIOURS) + " |", "|---|---:|" + "---:|" * len(BEHAVIOURS)]
    for agent, s in summary.items():
        lines.append(f"| {agent} | {s['total']} | " + " | ".join(str(s["counts"].get(b, 0)) for b in BEHAVIOURS) + " |")
    for agent, s in summary.items():
        lines += ["", f"### {agent}: cases not OK ({len(s['not_ok'])})", ""]
        if not s["not_ok"]:
            lines.append("None.")
            continue
        lines += ["| case | behaviour | closing behaviour | close code sent |", "|---|---|---|---|"]
        lines += [f"| {c['case']} | {c['behavior']} | {c['behaviorClose']} | {c['remoteCloseCode']} |"
                  for c in s["not_ok"]]
    for agent, s in summary.items():
        for label, meaning in [("STREAM-OK", "types or boundaries not kept, payload byte count kept"),
                               ("STREAM-CUT", "Autobahn stopped at the first message: binary, or cut elsewhere")]:
            if s.get(label):
                lines += ["", f"{agent}, {label} ({meaning}): " + ", ".join(compress_ranges(s[label]))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cases", default="*", help="comma-separated case patterns (default all)")
    parser.add_argument("--exclude", default="", help="comma-separated case patterns to leave out")
    parser.add_argument("--exclude-for", action="append", default=[], metavar="AGENT=PATTERNS",
                        help="leave these cases out for one agent only (repeatable), e.g. relay=12.*,13.*")
    parser.add_argument("--agents", default="echo,relay", help="echo, relay, framed and/or autobahn (the reference)")
    parser.add_argument("--wstest", type=Path, default=DEFAULT_WSTEST)
    parser.add_argument("--outdir", type=Path, default=ROOT / ".cache" / "conformance")
    parser.add_argument("--markdown", type=Path, help="also write the summary as Markdown here")
    parser.add_argument("--require-clean", default="", help="agents that must have no FAILED case")
    parser.add_argument("--no-deflate", action="store_true",
                        help="leave permessage-deflate off (the router's default) instead of on")
    parser.add_argument("--router-option", action="append", default=[],
                        help="extra option for the router (repeatable), e.g. --router-option=--max-message-size=1000")
    options = parser.parse_args(argv)
    agents = [a for a in options.agents.split(",") if a]
    outdir = options.outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    if not options.wstest.exists():
        print(f"conformance: {options.wstest} is missing; run `make conformance` (or conformance/setup.sh)")
        return 2

    processes: list[subprocess.Popen[bytes]] = []
    tcp_echo = TcpEcho()
    try:
        servers = []
        router_port = free_port()
        processes.append(start(
            [sys.executable, "-m", "wsrouter", "serve", "--listen", f"tcp:{router_port}:interface=127.0.0.1",
             "--route", "/echo=echo:", "--route", f"/relay=tcp://127.0.0.1:{tcp_echo.port}",
             "--route", f"/framed[framing=length:u32:typed]=tcp://127.0.0.1:{tcp_echo.port}",
             *([] if options.no_deflate else ["--permessage-deflate"]), *options.router_option],
            router_port, outdir / "router.log"))
        servers += [{"agent": f"wsrouter-{a}", "url": f"ws://127.0.0.1:{router_port}{AGENT_PATHS[a]}"}
                    for a in agents if a in AGENT_PATHS]
        if "autobahn" in agents:
            reference_port = free_port()
            processes.append(start([sys.executable, str(ROOT / "conformance" / "autobahn_echo.py"),
                                    str(reference_port)], reference_port, outdir / "autobahn-echo.log"))
            servers.append({"agent": "autobahn-python-echo", "url": f"ws://127.0.0.1:{reference_port}"})
        exclude_for = {}
        for item in options.exclude_for:
            agent, _, patterns = item.partition("=")
            name = "autobahn-python-echo" if agent == "autobahn" else f"wsrouter-{agent}"
            exclude_for[name] = [p for p in patterns.split(",") if p]
        index = run_suite(options.wstest, outdir, servers, options.cases.split(","),
                          [c for c in options.exclude.split(",") if c], exclude_for)
    finally:
        for process in processes:
            stop(process)
        tcp_echo.stop()

    if "wsrouter-relay" in index:
        rescore_relay(index["wsrouter-relay"], outdir / "reports")
    summary = summarise(index)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    print(text)
    if options.markdown:
        options.markdown.write_text(text)
    required = [summary[f"wsrouter-{agent}"] for agent in options.require_clean.split(",")
                if f"wsrouter-{agent}" in summary]
    if required:
        bad = sum(s["counts"].get("FAILED", 0) for s in required)
        print(f"conformance: {sum(s['total'] for s in required) - bad} passed, {bad} failed")
    failed = [agent for agent in options.require_clean.split(",")
              if agent and summary.get(f"wsrouter-{agent}", {}).get("counts", {}).get("FAILED")]
    if failed:
        print(f"conformance: FAILED cases for {', '.join(failed)}; details in {outdir / 'reports'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
