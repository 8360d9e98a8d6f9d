"""wsrouter vs websockify benchmark: same workloads, same run, interleaved.

Usage (from the repository root)::

    .venv/bin/python bench/run.py [--quick] [--json FILE] [--only upstream,fanin]
                                  [--variants wsrouter,websockify,direct] [--rounds N]

For each workload both relays are started (each as its own process, forwarding to the
workload's TCP target in the ``targets.py`` helper), then the rounds run interleaved:
wsrouter, websockify, direct; then the reverse order; and so on.  "direct" is the load
client talking to a minimal WebSocket server with no relay in the path: the ceiling
of the client and the machine, not of any relay.  Relay CPU is measured over the
relay's whole process tree (see ``proctree.py``).  Figures are medians over rounds;
"±" is half the min-max range relative to the median.  See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import proctree
import relays
import wsclient
from relays import RELAYS, BenchError, PortPool, Relay, TargetsProcess
from workloads import FULL, QUICK, WORKLOADS, Context, Endpoint, Params, Workload, median

VARIANTS = (*RELAYS, "direct")
DEFAULT_VARIANTS = ("wsrouter", "websockify", "direct")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, ~1 minute smoke run")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON to FILE")
    ap.add_argument("--only", metavar="NAMES",
                    help="comma-separated workloads: " + ",".join(w.name for w in WORKLOADS))
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma-separated, from: " + ",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, help="rounds per workload (default 4, quick 2)")
    ap.add_argument("--port-base", type=int, default=18700,
                    help="relays listen on ports from here up (default 18700)")
    ap.add_argument("--log-dir", help="keep relay and helper logs here (default: temporary)")
    args = ap.parse_args(argv)
    bad = set(args.variants.split(",")) - set(VARIANTS)
    if bad:
        ap.error(f"unknown variant(s): {', '.join(sorted(bad))}")
    names = {w.name for w in WORKLOADS}
    if args.only and set(args.only.split(",")) - names:
        ap.error(f"unknown workload(s): {', '.join(sorted(set(args.only.split(',')) - names))}")
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        ap.error("--rounds must be between 1 and 20")
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
    except (BenchError, OSError, wsclient.HandshakeError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}" if not isinstance(e, BenchError) else str(e)}
    wall = time.perf_counter() - w0
    client_cpu = time.process_time() - c0
    after = proctree.wait_settled(root_pid)
    raw.update(
        relay_cpu_s=after.cpu_s - before.cpu_s,
        relay_sys_s=after.sys_s - before.sys_s,
        client_cpu_s=client_cpu,
        target_cpu_s=proctree.sample(targets_pid).cpu_s - tgt0,
        wall_s=wall,
        relay_processes_left=max(0, after.processes - 1),
        relay_peak_rss_mib=proctree.peak_rss_kib(root_pid) / 1024,
    )
    if after.processes > 1:
        raw["notes"].append(f"{after.processes - 1} relay child process(es) still alive after the run")
    return {"ok": True, "raw": raw, "figures": w.figures(raw)}


class VariantRunner:
    """Runs one variant (a relay, or direct) of one workload across rounds."""

    def __init__(self, name: str, w: Workload, params: Params, targets: TargetsProcess,
                 ports: PortPool, log_dir: Path) -> None:
        self.name, self.w, self.params, self.targets = name, w, params, targets
        self.ports, self.log_dir = ports, log_dir
        self.relay: Relay | None = None
        self.start_error: str | None = None
        self.runs: list[dict[str, Any]] = []

    def start(self) -> None:
        if self.name == "direct":
            return
        try:
            self.relay = relays.start_relay(RELAYS[self.name], self.targets.ports[self.w.target],
                                            self.ports, self.log_dir)
        except BenchError as e:
            self.start_error = str(e)

    def endpoint(self) -> tuple[Endpoint, int]:
        if self.relay is None:
            return Endpoint(relays.HOST, self.targets.ports["ws_" + self.w.target]), self.targets.pid
        return Endpoint(relays.HOST, self.relay.port), self.relay.pid

    def run_once(self) -> dict[str, Any]:
        if self.start_error is not None:
            result: dict[str, Any] = {"ok": False, "error": self.start_error}
        else:
            ep, root = self.endpoint()
            ctx = Context(ep, self.params, self.targets, direct=self.relay is None, relay_pid=root)
            result = measure(self.w, ctx, root, self.targets.pid)
            if self.relay is not None and not self.relay.alive():
                result = {"ok": False, "error": self.relay.describe_death()}
                self.relay.stop()
                self.start()  # a fresh relay for the remaining rounds
        self.runs.append(result)
        return result

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()


def run_workload(w: Workload, variants: list[str], params: Params, targets: TargetsProcess,
                 ports: PortPool, log_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """All rounds of one workload, variants interleaved (ABC, CBA, ABC, ...)."""
    runners = [VariantRunner(v, w, params, targets, ports, log_dir) for v in variants]
    try:
        for r in runners:
            r.start()
        for rnd in range(params.rounds):
            order = runners if rnd % 2 == 0 else list(reversed(runners))
            for r in order:
                result = r.run_once()
                log(f"  {w.name:<12} round {rnd + 1}/{params.rounds}  {r.name:<10} {brief(w, result)}")
    finally:
        for r in runners:
            r.stop()
    return {r.name: r.runs for r in runners}


def brief(w: Workload, result: dict[str, Any]) -> str:
    if not result["ok"]:
        return "FAILED: " + result["error"].splitlines()[0][:160]
    figs = result["figures"]
    return "  ".join(f"{m.key}={fmt(figs[m.key])}" for m in w.metrics)


# --- summary and table ---------------------------------------------------------------

def summarize(w: Workload, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and relative half-range per metric over successful runs, plus the errors."""
    ok = [r for r in runs if r["ok"]]
    out: dict[str, Any] = {"ok_runs": len(ok), "runs": len(runs)}
    for m in w.metrics:
        vals = [r["figures"][m.key] for r in ok]
        med = median(vals)
        out[m.key] = med
        out[m.key + "_spread"] = (max(vals) - min(vals)) / 2 / med if vals and med else float("nan")
    for key in ("wall_s", "client_cpu_s", "target_cpu_s", "relay_cpu_s", "relay_sys_s"):
        out[key] = median([r["raw"][key] for r in ok])
    out["relay_peak_rss_mib"] = max((r["raw"]["relay_peak_rss_mib"] for r in ok), default=float("nan"))
    out["errors"] = sorted({r["error"] for r in runs if not r["ok"]})
    out["notes"] = sorted({n for r in ok for n in r["raw"]["notes"]})
    return out


def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(s: dict[str, Any] | None, key: str) -> str:
    if s is None:
        return "—"
    if not s["ok_runs"]:
        return "FAILED"
    spread = s[key + "_spread"]
    suffix = f" ±{spread * 100:.0f}%" if s["ok_runs"] > 1 and not math.isnan(spread) else ""
    return fmt(s[key]) + suffix


def figures_table(params: Params, summary: dict[str, dict[str, dict[str, Any]]],
                  variants: list[str]) -> str:
    """Markdown table: wsrouter, websockify, their ratio, then any other variant (direct last)."""
    extra = [v for v in variants if v not in ("wsrouter", "websockify", "direct")]
    extra += ["direct"] if "direct" in variants else []
    heads = ["workload", "figure", "wsrouter", "websockify", "wsrouter / websockify"]
    heads += [v + (" (ceiling)" if v == "direct" else "") for v in extra]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    for w in WORKLOADS:
        if w.name not in summary:
            continue
        s = summary[w.name]
        for i, m in enumerate(w.metrics):
            a, b = s.get("wsrouter"), s.get("websockify")
            ratio = "—"
            if a and b and a["ok_runs"] and b["ok_runs"] and b[m.key]:
                ratio = f"{a[m.key] / b[m.key]:.2f}"
            arrow = "↑" if m.higher_is_better else "↓"
            others = "".join(f" {cell(s.get(v), m.key)} |" for v in extra)
            lines.append(f"| {w.title(params) if i == 0 else ''} | {m.label} {arrow} | "
                         f"{cell(a, m.key)} | {cell(b, m.key)} | {ratio} |{others}")
    return "\n".join(lines)


def load_table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| workload | variant | wall s | client CPU % | target CPU % | relay CPU % | relay CPU in kernel % "
        "| relay peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for wname, per in summary.items():
        for v, s in per.items():
            if not s["ok_runs"]:
                continue
            wall = s["wall_s"]
            pct = lambda k: fmt(100 * s[k] / wall) if wall else "—"  # noqa: E731
            if v == "direct":
                relay, system, rss = "(no relay)", "—", "—"
            else:
                relay = pct("relay_cpu_s")
                system = fmt(100 * s["relay_sys_s"] / s["relay_cpu_s"]) if s["relay_cpu_s"] else "—"
                rss = fmt(s["relay_peak_rss_mib"])
            lines.append(f"| {wname} | {v} | {fmt(wall)} | {pct('client_cpu_s')} | "
                         f"{pct('target_cpu_s')} | {relay} | {system} | {rss} |")
    return "\n".join(lines)


def problems(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out = []
    for wname, per in summary.items():
        for v, s in per.items():
            out += [f"{wname} / {v}: FAILED ({s['runs'] - s['ok_runs']} of {s['runs']} runs): {e}"
                    for e in s["errors"]]
            out += [f"{wname} / {v}: note: {n}" for n in s["notes"]]
    return out


# --- metadata and main ---------------------------------------------------------------

def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_rev() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=relays.REPO_DIR,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "no commits"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def metadata(params: Params) -> dict[str, Any]:
    clock = time.get_clock_info("perf_counter").implementation
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {d: version(d) for d in ("wsrouter", "websockify", "twisted", "autobahn", "numpy")},
        "git": git_rev(),
        "perf_counter": clock,
        "loadavg_start": os.getloadavg(),
        "params": params.__dict__,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    params = QUICK if args.quick else FULL
    if args.rounds:
        params = Params(**{**params.__dict__, "rounds": args.rounds})
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    selected = [w for w in WORKLOADS if not args.only or w.name in args.only.split(",")]
    meta = metadata(params)
    if "CLOCK_MONOTONIC" not in meta["perf_counter"]:
        log(f"warning: perf_counter is {meta['perf_counter']}; upstream timing compares clocks "
            "across processes and assumes CLOCK_MONOTONIC")
    log_dir, tmp = relays.make_log_dir(args.log_dir)
    ports = PortPool(args.port_base)
    targets = TargetsProcess(log_dir)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    t0 = time.monotonic()
    try:
        for w in selected:
            log(f"{w.title(params)}")
            results[w.name] = run_workload(w, variants, params, targets, ports, log_dir)
    finally:
        targets.stop()
        if tmp is not None:
            tmp.cleanup()
    meta["loadavg_end"] = os.getloadavg()
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    summary = {w.name: {v: summarize(w, runs) for v, runs in results[w.name].items()}
               for w in selected}
    report(meta, params, summary, variants)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"meta": meta, "summary": summary, "runs": results}, indent=1, default=str) + "\n")
        log(f"results written to {args.json}")
    return 0 if not any(s["errors"] for per in summary.values() for s in per.values()) else 1


def report(meta: dict[str, Any], params: Params, summary: dict[str, dict[str, dict[str, Any]]],
           variants: list[str]) -> None:
    la0 = " ".join(f"{x:.2f}" for x in meta["loadavg_start"])
    la1 = " ".join(f"{x:.2f}" for x in meta["loadavg_end"])
    print(f"\nwsrouter benchmark {meta['date']}  {meta['cpus']} CPUs ({meta['cpu_model']})  "
          f"python {meta['python']}  websockify {meta['versions']['websockify']}  "
          f"git {meta['git']}")
    print(f"{params.rounds} rounds per workload, interleaved; median ± half-range; "
          f"load average {la0} -> {la1}; took {meta['duration_s']:.0f} s\n")
    print(figures_table(params, summary, variants))
    print("\n↑ higher is better, ↓ lower is better.  Relay CPU = user+system CPU of the relay's "
          "whole process tree.\nIn the direct column there is no relay: CPU figures are those "
          "of the minimal WebSocket server in targets.py.\n")
    print("Load check (medians; CPU as % of one core over the run's wall time; ~100% client CPU\n"
          "means the client was the limit; peak RSS is of the relay's main process only):\n")
    print(load_table(summary))
    issues = problems(summary)
    if issues:
        print("\nProblems:")
        for line in issues:
            print("  - " + line.replace("\n", "\n    "))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
