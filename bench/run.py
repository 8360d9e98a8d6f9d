"""wsrouter vs websockify benchmark: same workloads, same run, interleaved.

Usage (from the repository root)::

    .venv/bin/python bench/run.py [--quick] [--json FILE] [--only upstream,fanin]
                                  [--variants wsrouter,websockify,direct,...] [--rounds N]

For each workload every relay variant is started (each as its own process, forwarding
to the workload's TCP target in the ``targets.py`` helper), then the rounds run
interleaved: wsrouter, websockify, direct, the recording and base64 variants; then the
reverse order; and so on.  "direct" is the load client talking to a minimal WebSocket
server with no relay in the path: the ceiling of the client and the machine, not of
any relay.  Relay CPU is measured over the relay's whole process tree (see
``proctree.py``).  Figures are medians over rounds; "±" is half the min-max range
relative to the median.  The report ends with the performance targets, each with the
measured ratio and whether it is met.  See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import crowd
import proctree
import relays
import report
import wsclient
from relays import RELAYS, VARIANTS, BenchError, PortPool, Relay, TargetsProcess, Variant
from workloads import FULL, QUICK, WORKLOADS, Context, Endpoint, Params, Workload

DEFAULT_VARIANTS = tuple(VARIANTS)
QUICK_VARIANTS = ("wsrouter", "websockify", "lighttpd", "floor", "direct", "wsrouter+record",
                  "wsrouter+base64", "websockify+base64", "wsrouter+tls", "websockify+tls",
                  "lighttpd+tls")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, 1,000 connections only, fewer variants: a ~90 s smoke run")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON to FILE")
    ap.add_argument("--only", metavar="NAMES",
                    help="comma-separated workloads: " + ",".join(w.name for w in WORKLOADS))
    ap.add_argument("--variants",
                    help="comma-separated, from: " + ",".join(VARIANTS) + ",baseline,baseline+tls (default: all; "
                    "with --quick: " + ",".join(QUICK_VARIANTS) + ")")
    ap.add_argument("--rounds", type=int,
                    help="rounds per workload (default 4, quick 2); the recording and base64 "
                    "variants (default 1) and the concurrency workloads (default 2, quick 1) "
                    "run at most this many")
    ap.add_argument("--extra-rounds", type=int,
                    help="rounds of the extra variants (TLS, recording, base64; default 1), "
                    "for steadier wss figures")
    ap.add_argument("--port-base", type=int, default=18700,
                    help="relays listen on ports from here up (default 18700)")
    ap.add_argument("--log-dir", help="keep relay and helper logs here (default: temporary)")
    ap.add_argument("--baseline", metavar="SRC",
                    help="also run wsrouter from this src directory (e.g. an earlier commit's, made "
                    "with git archive) as the plain variant 'baseline', for before/after ratios")
    ap.add_argument("--profile", metavar="DIR",
                    help="record each wsrouter relay with py-spy (raw stacks, 1 kHz, --nonblocking) "
                    "during every measured run, one file per run in DIR; fold them with "
                    "bench/profile.py.  Adds a little CPU to the relay: not for the figures")
    args = ap.parse_args(argv)
    if args.baseline:
        if not (Path(args.baseline) / "wsrouter" / "__main__.py").is_file():
            ap.error(f"--baseline {args.baseline}: no wsrouter package there")
        relays.add_baseline(Path(args.baseline).resolve())
    if args.variants is None:
        args.variants = ",".join(QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS)
        args.variants += ",baseline" if args.baseline else ""
    bad = set(args.variants.split(",")) - set(VARIANTS)
    if bad:
        ap.error(f"unknown variant(s): {', '.join(sorted(bad))}")
    names = {w.name for w in WORKLOADS}
    if args.only and set(args.only.split(",")) - names:
        ap.error(f"unknown workload(s): {', '.join(sorted(set(args.only.split(',')) - names))}")
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        ap.error("--rounds must be between 1 and 20")
    if args.extra_rounds is not None and not 1 <= args.extra_rounds <= 20:
        ap.error("--extra-rounds must be between 1 and 20")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- one measured run ----------------------------------------------------------------

def measure(w: Workload, ctx: Context, root_pid: int, targets_pid: int) -> dict[str, Any]:
    """Run one workload once, bracketing it with CPU samples of the relay tree.

    The "before" and "after" samples are taken once the tree has settled (no
    per-connection children left, CPU not moving), so connection set-up and tear-down
    are part of what is measured.
    """
    ctx.targets.reset()
    before = proctree.wait_settled(root_pid)
    tgt0 = proctree.sample(targets_pid).cpu_s
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        raw = w.run(ctx)
    except BenchError as e:
        return {"ok": False, "error": str(e)}
    except (OSError, ValueError, wsclient.HandshakeError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    wall = time.perf_counter() - w0
    client_cpu = time.process_time() - c0 + raw.pop("client_children_cpu_s", 0.0)
    after = proctree.wait_settled(root_pid)
    raw.update(
        relay_cpu_s=after.cpu_s - before.cpu_s,
        relay_sys_s=after.sys_s - before.sys_s,
        client_cpu_s=client_cpu,
        target_cpu_s=proctree.sample(targets_pid).cpu_s - tgt0,
        wall_s=wall,
        relay_processes_left=max(0, after.processes - max(1, before.processes)),
        relay_peak_rss_mib=proctree.peak_rss_kib(root_pid) / 1024,
    )
    if after.processes > max(1, before.processes):  # --workers N keeps N children
        raw["notes"].append(f"{after.processes - before.processes} relay child process(es) "
                            "still alive after the run")
    return {"ok": True, "raw": raw, "figures": w.figures(raw)}


class VariantRunner:
    """Runs one variant (a relay and client mode, or direct) of one workload across rounds.

    The relay is started once for all rounds, except for the concurrency workloads,
    which get a fresh relay every round (memory per connection is measured from a relay
    that has not held connections before) and stop it right after.
    """

    def __init__(self, variant: Variant, w: Workload, params: Params, targets: TargetsProcess,
                 ports: PortPool, log_dir: Path) -> None:
        self.variant, self.w, self.params, self.targets = variant, w, params, targets
        self.name = variant.name
        self.rounds = w.rounds(params, variant.extra) if variant.runs(w.name) else 0
        self.ports, self.log_dir = ports, log_dir
        self.relay: Relay | None = None
        self.start_error: str | None = None
        self.runs: list[dict[str, Any]] = []
        self.profile_dir: Path | None = None

    def wanted(self) -> tuple[relays.RelaySpec, int] | None:
        """(relay spec, target port) to start, or None for direct."""
        if self.variant.relay is None:
            return None
        return RELAYS[self.variant.relay], self.targets.ports[self.w.target]

    def attach(self, started: Relay | BenchError | None) -> None:
        """Take a relay started elsewhere (or the reason it did not start)."""
        self.relay, self.start_error = None, None
        if isinstance(started, BenchError):
            self.start_error = str(started)
        else:
            self.relay = started

    def start(self) -> None:
        want = self.wanted()
        if want is None:
            self.attach(None)
            return
        try:
            self.attach(relays.start_relay(*want, self.ports, self.log_dir))
        except BenchError as e:
            self.attach(e)

    def endpoint(self) -> tuple[Endpoint, int]:
        if self.relay is None:
            return Endpoint(relays.HOST, self.targets.ports["ws_" + self.w.target]), self.targets.pid
        return Endpoint(relays.HOST, self.relay.port, base64_mode=self.variant.base64,
                        tls=self.variant.tls, offer=self.variant.offer), self.relay.pid

    def run_once(self) -> dict[str, Any]:
        if self.w.crowd:
            self.stop()
            self.start()
        if self.start_error is not None:
            result: dict[str, Any] = {"ok": False, "error": self.start_error}
        else:
            ep, root = self.endpoint()
            ctx = Context(ep, self.params, self.targets, direct=self.relay is None, relay_pid=root)
            spy = self._start_profile(root)
            try:
                result = measure(self.w, ctx, root, self.targets.pid)
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        spy.wait(30.0)
                    relays.stop_process(spy)
            if self.relay is not None:
                result = self._after_run(self.relay, result)
        if self.w.crowd:
            self.stop()
        self.runs.append(result)
        return result

    def _start_profile(self, pid: int) -> subprocess.Popen[bytes] | None:
        """py-spy recording ``pid`` (wsrouter relays only) until the run ends, or None."""
        if self.profile_dir is None or self.relay is None or not self.name.startswith("wsrouter"):
            return None
        out = self.profile_dir / f"{self.w.name}-{self.name}-{len(self.runs) + 1}.txt"
        argv = [*relays.bin_path("py-spy"), "record", "--pid", str(pid), "--rate", "1000", "--format", "raw",
                "--nonblocking", "--subprocesses", "--output", str(out)]
        spy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=relays.child_env())
        time.sleep(1.0)  # py-spy attaches before the first sample
        return spy

    def _after_run(self, relay: Relay, result: dict[str, Any]) -> dict[str, Any]:
        """Empty the relay's scratch directory (recordings); deal with a relay that died."""
        recorded = relay.take_scratch()
        if result["ok"]:
            result["raw"]["recorded_bytes"] = recorded
        if relay.alive():
            return result
        death = relay.describe_death()
        if self.w.crowd and result["ok"]:
            # Its failed connections are already counted; say why they failed.
            result["raw"]["notes"].append("relay exited during the run: " + death)
        else:
            result = {"ok": False, "error": death}
        self.stop()
        if not self.w.crowd:
            self.start()  # a fresh relay for the remaining rounds
        return result

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None


def run_workload(w: Workload, variants: list[Variant], params: Params, targets: TargetsProcess,
                 ports: PortPool, log_dir: Path, profile_dir: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """All rounds of one workload, variants interleaved (ABC, CBA, ABC, ...).

    Variants with fewer rounds (the extra ones) take part in the first rounds only.
    """
    runners = [VariantRunner(v, w, params, targets, ports, log_dir) for v in variants]
    for r in runners:
        r.profile_dir = profile_dir
    runners = [r for r in runners if r.rounds > 0]
    try:
        if not w.crowd:
            pairs = [(r, want) for r in runners if (want := r.wanted()) is not None]
            started = relays.start_relays([want for _, want in pairs], ports, log_dir)
            for (r, _), res in zip(pairs, started, strict=True):
                r.attach(res)
        for rnd in range(max((r.rounds for r in runners), default=0)):
            order = runners if rnd % 2 == 0 else list(reversed(runners))
            for r in order:
                if rnd >= r.rounds:
                    continue
                result = r.run_once()
                log(f"  {w.name:<16} round {rnd + 1}/{r.rounds}  {r.name:<17} {brief(w, result)}")
    finally:
        relays.stop_relays([r.relay for r in runners if r.relay is not None])
    return {r.name: r.runs for r in runners}


def brief(w: Workload, result: dict[str, Any]) -> str:
    if not result["ok"]:
        return "FAILED: " + result["error"].splitlines()[0][:160]
    figs = result["figures"]
    return "  ".join(f"{m.key}={report.fmt(figs[m.key])}" for m in w.metrics)


def probe_base64(variant: Variant, targets: TargetsProcess, ports: PortPool, log_dir: Path) -> str | None:
    """Why ``variant``'s relay cannot serve a client offering only ``base64``; None if it can.

    websockify 0.13 answers such a client with 400; rather than fail every workload, the
    variant is then reported as unsupported.  A relay that does not start is left to
    the runs to report.
    """
    if not variant.base64 or variant.relay is None:
        return None
    try:
        relay = relays.start_relay(RELAYS[variant.relay], targets.ports["echo"], ports, log_dir)
    except BenchError:
        return None
    try:
        conn = wsclient.connect(relays.HOST, relay.port, "/", ("base64",), timeout_s=5.0,
                                base64_mode=True)
        conn.close(wait_s=2.0)
        return None
    except wsclient.HandshakeError as e:
        return f"a client offering only 'base64' gets: {e}"
    except OSError as e:
        return f"a client offering only 'base64' gets: {type(e).__name__}: {e}"
    finally:
        relay.stop()


# --- metadata and main ---------------------------------------------------------------

def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def lighttpd_version() -> str:
    try:
        out = subprocess.run(["lighttpd", "-v"], capture_output=True, check=False, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return out.stdout.split()[0].partition("/")[2] if out.stdout else "unknown"


def git_rev() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=relays.REPO_DIR,
                             capture_output=True, check=False, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "no commits"


def frame_codec(src: Path) -> str:
    """Which frame codec wsrouter from C{src} runs: "compiled" (wsrouter.ws._frames) or "pure-Python"."""
    code = "from wsrouter.ws import codec; print('compiled' if codec.COMPILED else 'pure-Python')"
    try:
        out = subprocess.run(["env", f"PYTHONPATH={src}", sys.executable, "-c", code], capture_output=True,
                             check=False, text=True, timeout=60, env=relays.child_env())
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_proc_int(path: str) -> int:
    """One integer from a /proc file; -1 if unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def metadata(params: Params, targets: TargetsProcess, client_nofile: tuple[int, int]) -> dict[str, Any]:
    clock = time.get_clock_info("perf_counter").implementation
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {**{d: version(d) for d in ("wsrouter", "websockify", "twisted", "autobahn", "numpy")},
                     "lighttpd": lighttpd_version()},
        "git": git_rev(),
        "frame_codec": frame_codec(relays.REPO_DIR / "src"),
        "perf_counter": clock,
        "loadavg_start": os.getloadavg(),
        "params": params.__dict__,
        "limits": {
            "client_nofile": client_nofile,
            "targets_nofile": targets.nofile,
            "ephemeral_ports": crowd.ephemeral_ports(),
            "somaxconn": read_proc_int("/proc/sys/net/core/somaxconn"),
            "tcp_tw_reuse": read_proc_int("/proc/sys/net/ipv4/tcp_tw_reuse"),
        },
    }


def check_limits(meta: dict[str, Any], params: Params, selected: list[Workload]) -> None:
    """Warn when descriptors or ephemeral ports cannot cover the largest connection count.

    The client needs one descriptor per connection, the echo target one more, a relay two
    (client side and target side); on 127.0.0.1 each relayed connection uses two
    ephemeral ports (client -> relay, relay -> target).
    """
    n = max((w.crowd for w in selected if w.enabled(params)), default=0)
    if not n:
        return
    lim = meta["limits"]
    for who in ("client_nofile", "targets_nofile"):
        if lim[who][0] < n + 100:
            log(f"warning: {who.split('_')[0]} may open only {lim[who][0]} files; "
                f"{n} connections need about {n + 100}")
    low, high = lim["ephemeral_ports"]
    if high - low + 1 < 2 * n:
        log(f"warning: ephemeral port range {low}-{high} has fewer than the {2 * n} ports "
            f"{n} relayed connections need")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    params = QUICK if args.quick else FULL
    if args.rounds:
        params = Params(**{**params.__dict__, "rounds": args.rounds,
                           "extra_rounds": min(params.extra_rounds, args.rounds),
                           "conc_rounds": min(params.conc_rounds, args.rounds)})
    if args.extra_rounds:
        params = Params(**{**params.__dict__, "extra_rounds": args.extra_rounds})
    chosen = args.variants.split(",")
    variants = [v for name, v in VARIANTS.items() if name in chosen]
    selected = [w for w in WORKLOADS
                if (not args.only or w.name in args.only.split(",")) and w.enabled(params)]
    client_nofile = crowd.raise_nofile_limit()
    log_dir, tmp = relays.make_log_dir(args.log_dir)
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    ports = PortPool(args.port_base)
    if any(v.tls for v in variants):
        try:
            relays.make_cert(log_dir)
        except BenchError as e:
            log(f"TLS variants skipped: {e}")
            variants = [v for v in variants if not v.tls]
    targets = TargetsProcess(log_dir)
    meta = metadata(params, targets, client_nofile)
    if "CLOCK_MONOTONIC" not in meta["perf_counter"]:
        log(f"warning: perf_counter is {meta['perf_counter']}; upstream timing compares clocks "
            "across processes and assumes CLOCK_MONOTONIC")
    check_limits(meta, params, selected)
    if meta["frame_codec"] != "compiled":
        log(f"note: wsrouter's frame codec here is {meta['frame_codec']}, not the compiled one "
            "(build it: make src/wsrouter/ws/_frames.abi3.so; WSROUTER_PURE_FRAMES=1 forces the pure one)")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    unsupported: dict[str, str] = {}
    t0 = time.monotonic()
    try:
        for v in variants:
            why = probe_base64(v, targets, ports, log_dir)
            if why is not None:
                unsupported[v.name] = why
                log(f"{v.name}: unsupported, skipped: {why}")
        runnable = [v for v in variants if v.name not in unsupported]
        for w in selected:
            log(f"{w.title(params)}")
            results[w.name] = run_workload(w, runnable, params, targets, ports, log_dir, profile_dir)
    finally:
        targets.stop()
        if tmp is not None:
            tmp.cleanup()
    meta["loadavg_end"] = os.getloadavg()
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    meta["unsupported"] = unsupported
    summary = {w.name: {v: report.summarize(w, runs) for v, runs in results[w.name].items()}
               for w in selected}
    report.report(meta, params, summary, variants, unsupported)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"meta": meta, "summary": summary, "runs": results}, indent=1, default=str) + "\n")
        log(f"results written to {args.json}")
    return 0 if not any(s["errors"] for per in summary.values() for s in per.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
