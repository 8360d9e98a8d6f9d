"""Turn the runs into the printed report: summaries, tables, and the targets check.

The report has, in order: the main table (wsrouter, websockify, their ratio, the
direct ceiling), the recording and base64 variants against their plain relay, the
failed connections of the concurrency workloads by kind, a load check (is the client
the limit?), problems, and the performance targets of the issue with the measured
ratio and met / NOT MET.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from relays import VARIANTS, Variant
from workloads import WORKLOADS, Params, Workload, median

Summary = dict[str, dict[str, dict[str, Any]]]  # workload -> variant -> summary


def summarize(w: Workload, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, relative half-range and worst value per metric over successful runs."""
    ok = [r for r in runs if r["ok"]]
    out: dict[str, Any] = {"ok_runs": len(ok), "runs": len(runs)}
    for m in w.metrics:
        vals = [r["figures"][m.key] for r in ok if not math.isnan(r["figures"][m.key])]
        med = median(vals)
        out[m.key] = med
        out[m.key + "_spread"] = (max(vals) - min(vals)) / 2 / med if vals and med else float("nan")
        worst = min if m.higher_is_better else max
        out[m.key + "_worst"] = worst(vals) if vals else float("nan")
    for key in ("wall_s", "client_cpu_s", "target_cpu_s", "relay_cpu_s", "relay_sys_s"):
        out[key] = median([r["raw"][key] for r in ok])
    out["recorded_mib"] = median([r["raw"].get("recorded_bytes", 0) / 2**20 for r in ok])
    out["relay_peak_rss_mib"] = max((r["raw"]["relay_peak_rss_mib"] for r in ok), default=float("nan"))
    out["failure_kinds"] = [r["raw"]["failure_kinds"] for r in ok if "failure_kinds" in r["raw"]]
    out["errors"] = sorted({r["error"] for r in runs if not r["ok"]})
    out["notes"] = sorted({n for r in ok for n in r["raw"]["notes"]})
    return out


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if float(v).is_integer() and abs(v) < 1000:
        return str(int(v))
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(s: dict[str, Any] | None, key: str, unsupported: bool = False) -> str:
    if unsupported:
        return "unsupported"
    if s is None:
        return "—"
    if not s["ok_runs"]:
        return "FAILED"
    spread = s[key + "_spread"]
    suffix = f" ±{spread * 100:.0f}%" if s["ok_runs"] > 1 and not math.isnan(spread) else ""
    return fmt(s[key]) + suffix


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float:
    """a / b of the medians, NaN when either is missing, failed or zero."""
    if not a or not b or not a["ok_runs"] or not b["ok_runs"]:
        return float("nan")
    if not b[key] or math.isnan(b[key]) or math.isnan(a[key]):
        return float("nan")
    return float(a[key] / b[key])


def fmt_ratio(r: float) -> str:
    """Two decimals; two significant digits below 0.01 (memory per connection vs websockify)."""
    if math.isnan(r):
        return "—"
    return f"{r:.2f}" if r >= 0.01 or r == 0 else f"{r:.2g}"


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def figures_table(params: Params, summary: Summary, variants: list[Variant]) -> str:
    """wsrouter, websockify, their ratio, then other plain variants (direct last)."""
    names = [v.name for v in variants if not v.extra]
    extra = [n for n in names if n not in ("wsrouter", "websockify", "direct")]
    extra += ["direct"] if "direct" in names else []
    heads = ["workload", "figure", "wsrouter", "websockify", "wsrouter / websockify"]
    for v in extra:
        heads += [v + (" (ceiling)" if v == "direct" else "")]
        heads += [] if v == "direct" else [f"wsrouter / {v}"]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    for w in WORKLOADS:
        if w.name not in summary:
            continue
        s = summary[w.name]
        for i, m in enumerate(w.metrics):
            a, b = s.get("wsrouter"), s.get("websockify")
            others = ""
            for v in extra:
                others += f" {cell(s.get(v), m.key)} |"
                if v != "direct":
                    others += f" {fmt_ratio(ratio(a, s.get(v), m.key)) if m.ratio else '—'} |"
            lines.append(f"| {w.title(params) if i == 0 else ''} | {m.label} {_arrow(m.higher_is_better)} | "
                         f"{cell(a, m.key)} | {cell(b, m.key)} | "
                         f"{fmt_ratio(ratio(a, b, m.key)) if m.ratio else '—'} |{others}")
    return "\n".join(lines)


VARIANT_COLUMNS = {  # variant -> column heading
    "wsrouter": "wsrouter", "wsrouter+record": "wsrouter --record", "wsrouter+base64": "wsrouter base64",
    "websockify": "websockify", "websockify+record": "websockify --record",
    "websockify+base64": "websockify base64",
}


def variants_table(params: Params, summary: Summary, variants: list[Variant],
                   unsupported: dict[str, str]) -> str:
    """Recording and base64 next to their plain relay; "(1.4×)" is the cost over plain."""
    chosen = {v.name for v in variants}
    cols = [c for c in VARIANT_COLUMNS if c in chosen]
    if not any(VARIANTS[c].extra for c in cols):
        return ""
    both_record = "wsrouter+record" in cols and "websockify+record" in cols
    heads = ["workload", "figure"] + [VARIANT_COLUMNS[c] for c in cols]
    heads += ["--record: wsrouter / websockify"] if both_record else []
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    for w in WORKLOADS:
        s = summary.get(w.name)
        if s is None or w.crowd:
            continue
        for i, m in enumerate(w.metrics):
            row = [w.title(params) if i == 0 else "", f"{m.label} {_arrow(m.higher_is_better)}"]
            for c in cols:
                v = VARIANTS[c]
                text = cell(s.get(c), m.key, unsupported=c in unsupported)
                cost = ratio(s.get(c), s.get(v.plain), m.key) if v.extra else float("nan")
                row.append(text + ("" if math.isnan(cost) else f" ({cost:.2f}×)"))
            if both_record:
                row.append(fmt_ratio(ratio(s.get("wsrouter+record"), s.get("websockify+record"), m.key)))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


TLS_COLUMNS = ("wsrouter+tls", "websockify+tls", "lighttpd+tls", "baseline+tls")


def tls_table(params: Params, summary: Summary, variants: list[Variant]) -> str:
    """wss:// figures of each relay, its cost over its own ws:// figure, and wsrouter's ratios."""
    cols = [c for c in TLS_COLUMNS if c in {v.name for v in variants}]
    if not cols:
        return ""
    heads = ["workload", "figure"] + [c.replace("+tls", " wss") for c in cols]
    pairs = [(a, b) for a, b in (("wsrouter+tls", "websockify+tls"), ("wsrouter+tls", "lighttpd+tls"),
                                 ("wsrouter+tls", "baseline+tls")) if a in cols and b in cols]
    heads += [f"{a.replace('+tls', '')} / {b.replace('+tls', '')} (wss)" for a, b in pairs]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    for w in WORKLOADS:
        s = summary.get(w.name)
        if s is None or not any(c in s for c in cols):
            continue
        for i, m in enumerate(w.metrics):
            row = [w.title(params) if i == 0 else "", f"{m.label} {_arrow(m.higher_is_better)}"]
            for c in cols:
                cost = ratio(s.get(c), s.get(VARIANTS[c].plain), m.key)
                row.append(cell(s.get(c), m.key) + ("" if math.isnan(cost) or not m.ratio else f" ({cost:.2f}×)"))
            row += [fmt_ratio(ratio(s.get(a), s.get(b), m.key)) if m.ratio else "—" for a, b in pairs]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def worker_names(variants: list[Variant]) -> list[tuple[int, str]]:
    return sorted((int(v.name.rpartition("-w")[2]), v.name) for v in variants
                  if v.name.startswith("wsrouter-w"))


def workers_table(summary: Summary, variants: list[Variant]) -> str:
    """Fan-in with ``--workers N`` against one worker (the plain wsrouter of the same run)."""
    s = summary.get("fanin", {})
    names = [(n, name) for n, name in worker_names(variants) if name in s]
    if not names or "wsrouter" not in s:
        return ""
    one = s["wsrouter"]
    lines = ["| workers | messages/s ↑ | relay CPU-µs per message ↓ | msg/s ratio to 1 worker | goal (0.8·N) | |",
             "|---:|---:|---:|---:|---:|---|"]
    lines.append(f"| 1 | {cell(one, 'msg_s')} | {cell(one, 'cpu_us_msg')} | 1 | — | |")
    for n, name in names:
        r = ratio(s[name], one, "msg_s")
        verdict = "—" if math.isnan(r) else "met" if r >= 0.8 * n else "**NOT MET**"
        lines.append(f"| {n} | {cell(s[name], 'msg_s')} | {cell(s[name], 'cpu_us_msg')} | "
                     f"{fmt_ratio(r)} | {0.8 * n:g} | {verdict} |")
    return "\n".join(lines)


def load_table(summary: Summary) -> str:
    lines = [
        ("| workload | variant | wall s | client CPU % | target CPU % | relay CPU % | relay CPU in kernel % "
         "| relay peak RSS MiB | recorded MiB |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for wname, per in summary.items():
        for v, s in per.items():
            if not s["ok_runs"]:
                continue
            wall = s["wall_s"]

            def pct(key: str, s: dict[str, Any] = s, wall: float = wall) -> str:
                return fmt(100 * s[key] / wall) if wall else "—"
            if v == "direct":
                relay, system, rss = "(no relay)", "—", "—"
            else:
                relay = pct("relay_cpu_s")
                system = fmt(100 * s["relay_sys_s"] / s["relay_cpu_s"]) if s["relay_cpu_s"] else "—"
                rss = fmt(s["relay_peak_rss_mib"])
            rec = fmt(s["recorded_mib"]) if s["recorded_mib"] else "—"
            lines.append(f"| {wname} | {v} | {fmt(wall)} | {pct('client_cpu_s')} | "
                         f"{pct('target_cpu_s')} | {relay} | {system} | {rss} | {rec} |")
    return "\n".join(lines)


def failure_lines(summary: Summary) -> list[str]:
    """One line per concurrency run that lost connections: how many, of which kind."""
    out = []
    for w in WORKLOADS:
        for v, s in summary.get(w.name, {}).items():
            for rnd, kinds in enumerate(s["failure_kinds"], 1):
                if kinds:
                    text = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
                    out.append(f"{w.name} / {v}, run {rnd}: {sum(kinds.values())} of {w.crowd}: {text}")
    return out


def problems(summary: Summary) -> list[str]:
    out = []
    for wname, per in summary.items():
        for v, s in per.items():
            out += [f"{wname} / {v}: FAILED ({s['runs'] - s['ok_runs']} of {s['runs']} runs): {e}"
                    for e in s["errors"]]
            out += [f"{wname} / {v}: note: {n}" for n in s["notes"]]
    return out


# --- the performance targets ------------------------------------------------------------

@dataclass(frozen=True)
class RatioGoal:
    """ours / peer (medians, same run) of one figure, at most or at least ``goal``.

    Several workloads may be named (``a|b``): the first one the run has is used, so a
    quick run (1,000 connections only) checks memory on those.
    """

    text: str
    workload: str
    metric: str
    goal: float
    at_most: bool
    peer: str = "websockify"
    ours: str = "wsrouter"


@dataclass(frozen=True)
class AbsoluteGoal:
    """A wsrouter figure on its own, taken from its worst round, at most ``goal``."""

    text: str
    workload: str
    metric: str
    goal: float
    unit: str


GOALS: tuple[RatioGoal | AbsoluteGoal, ...] = (
    RatioGoal("upstream: relay CPU-s per GiB", "upstream", "cpu_s_gib", 0.5, True),
    RatioGoal("downstream: relay CPU-s per GiB", "downstream", "cpu_s_gib", 0.8, True),
    RatioGoal("pipelined: relay CPU-µs per message", "pipelined", "cpu_us_msg", 0.3, True),
    RatioGoal("round trips: latency p50", "round_trips", "p50_us", 1.0, True),
    RatioGoal("fan-in: messages/s", "fanin", "msg_s", 2.0, False),
    AbsoluteGoal("9,000 concurrent: all succeed", "concurrent_9000", "failures", 0, "failed"),
    AbsoluteGoal("9,000 concurrent: one process", "concurrent_9000", "processes", 1, "process"),
    AbsoluteGoal("9,000 concurrent: RSS per connection", "concurrent_9000", "rss_kib_conn", 48, "KiB"),
    # Issue 14: lighttpd's mod_wstunnel is the anchor.
    RatioGoal("pipelined: relay CPU-µs per message", "pipelined", "cpu_us_msg", 2.0, True, "lighttpd"),
    RatioGoal("fan-in: relay CPU-µs per message", "fanin", "cpu_us_msg", 1.0, True, "lighttpd"),
    RatioGoal("connection set-up (held crowd): relay CPU-µs per connection", "concurrent_9000|concurrent_1000",
              "cpu_us_conn", 2.0, True, "lighttpd"),
    RatioGoal("churn: relay CPU-ms per connection", "churn", "cpu_ms_conn", 2.0, True, "lighttpd"),
    RatioGoal("churn: connections/s", "churn", "conn_s", 0.5, False, "lighttpd"),
    RatioGoal("memory per held connection (PSS)", "concurrent_9000|concurrent_1000", "pss_kib_conn", 1.0, True,
              "lighttpd"),
    RatioGoal("wss upstream: relay CPU-s per GiB", "upstream", "cpu_s_gib", 1.0, True, "websockify+tls",
              "wsrouter+tls"),
    RatioGoal("wss downstream: relay CPU-s per GiB", "downstream", "cpu_s_gib", 1.0, True, "websockify+tls",
              "wsrouter+tls"),
    RatioGoal("wss churn: relay CPU-ms per connection", "churn", "cpu_ms_conn", 1.0, True, "websockify+tls",
              "wsrouter+tls"),
)


def _goal_workload(summary: Summary, names: str) -> str:
    return next((n for n in names.split("|") if n in summary), names.split("|", maxsplit=1)[0])


#: The bench variant that does only what every relay must do (bench/floor.py).
FLOOR = "floor"


def floor_text(per: dict[str, Any], g: RatioGoal) -> tuple[str, bool | None]:
    """The floor relay's own ratio to the same peer, and whether the floor itself meets the goal."""
    if g.ours != "wsrouter":  # the floor has no TLS variant
        return "—", None
    r = ratio(per.get(FLOOR), per.get(g.peer), g.metric)
    if math.isnan(r):
        return "—", None
    return f"{r:.3f}×", r <= g.goal if g.at_most else r >= g.goal


def goals_table(summary: Summary) -> str:
    """Each target's verdict; with the floor variant in the run, also the floor's own ratio:
    a target the floor misses too is below what any Twisted relay costs."""
    lines = ["| target | ours | peer | measured | goal | | floor |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for g in GOALS:
        wname = _goal_workload(summary, g.workload)
        per = summary.get(wname, {})
        a, b = per.get("wsrouter"), per.get("websockify")
        if isinstance(g, RatioGoal):  # medians of both, as in the main table
            a, b = per.get(g.ours), per.get(g.peer)
            r = ratio(a, b, g.metric)
            measured, goal = ("—" if math.isnan(r) else f"{r:.3f}×"), ("≤ " if g.at_most else "≥ ")
            goal += f"{g.goal:g}× {g.peer}"
            if "|" in g.workload:
                measured += f" ({wname})"
            met = None if math.isnan(r) else (r <= g.goal if g.at_most else r >= g.goal)
            a_text, b_text = fmt(a[g.metric]) if a and a["ok_runs"] else "—", \
                fmt(b[g.metric]) if b and b["ok_runs"] else "—"
        else:
            # The worst round decides; a round that failed outright counts as not met.
            worst = a[g.metric + "_worst"] if a and a["ok_runs"] else float("nan")
            measured = "—" if math.isnan(worst) else f"{fmt(worst)} {g.unit} (worst of {a['ok_runs']})"
            goal = f"{'≤ ' if g.unit == 'KiB' else ''}{g.goal:g} {g.unit}"
            met = None if math.isnan(worst) else worst <= g.goal and a["ok_runs"] == a["runs"]
            if a and a["ok_runs"] < a["runs"]:
                measured += f"; {a['runs'] - a['ok_runs']} run(s) failed"
            a_text = fmt(a[g.metric]) if a and a["ok_runs"] else "—"
            b_text = fmt(b[g.metric]) if b and b["ok_runs"] else "—"
        verdict = "not measured" if met is None else "met" if met else "**NOT MET**"
        floor, floor_met = floor_text(per, g) if isinstance(g, RatioGoal) else ("—", None)
        if met is False and floor_met is False:
            verdict += " (the floor misses it too)"
        lines.append(f"| {g.text} | {a_text} | {b_text} | {measured} | {goal} | {verdict} | {floor} |")
    return "\n".join(lines)


def report(meta: dict[str, Any], params: Params, summary: Summary, variants: list[Variant],
           unsupported: dict[str, str]) -> None:
    la0 = " ".join(f"{x:.2f}" for x in meta["loadavg_start"])
    la1 = " ".join(f"{x:.2f}" for x in meta["loadavg_end"])
    lim = meta["limits"]
    print(f"\nwsrouter benchmark {meta['date']}  {meta['cpus']} CPUs ({meta['cpu_model']})  "
          f"python {meta['python']}  websockify {meta['versions']['websockify']}  "
          f"lighttpd {meta['versions'].get('lighttpd', '?')}  "
          f"git {meta['git']}  frame codec {meta.get('frame_codec', '?')}")
    print(f"{params.rounds} rounds per workload ({params.extra_rounds} for the recording and base64 "
          f"variants, {params.conc_rounds} for concurrency), interleaved; median ± half-range; "
          f"load average {la0} -> {la1}; took {meta['duration_s']:.0f} s")
    print(f"open files: client {lim['client_nofile'][0]}, targets helper {lim['targets_nofile'][0]}; "
          f"ephemeral ports {lim['ephemeral_ports'][0]}-{lim['ephemeral_ports'][1]}; "
          f"somaxconn {lim['somaxconn']}\n")
    print(figures_table(params, summary, variants))
    print("\n↑ higher is better, ↓ lower is better.  Relay CPU = user+system CPU of the relay's "
          "whole process tree.\nIn the direct column there is no relay: CPU and memory figures are "
          "those of the minimal WebSocket server in targets.py.\nConcurrency: RSS sums VmRSS over the "
          "relay's processes (shared pages counted once per process: an overestimate for forking\n"
          "websockify); PSS shares them out instead.  Memory is measured while all connections are "
          "held, minus the same before the first.")
    vt = variants_table(params, summary, variants, unsupported)
    if vt:
        print("\nRecording (--record) and the base64 subprotocol, against the same relay without them; "
              "(1.40×) = figure / plain figure:\n")
        print(vt)
        for name, why in unsupported.items():
            print(f"  {name}: unsupported: {why}")
    fails = failure_lines(summary)
    if fails:
        print("\nConcurrency: failed connections by kind:")
        for line in fails:
            print("  - " + line)
    print("\nLoad check (medians; CPU as % of one core over the run's wall time; ~100% client CPU\n"
          "means the client was the limit; peak RSS is of the relay's main process only):\n")
    print(load_table(summary))
    issues = problems(summary)
    if issues:
        print("\nProblems:")
        for line in issues:
            print("  - " + line.replace("\n", "\n    "))
    tt = tls_table(params, summary, variants)
    if tt:
        print("\nwss:// (TLS between client and relay; wsrouter --cert/--key, websockify --cert/--key, "
              "lighttpd ssl.engine), (1.40×) = figure / same relay's ws:// figure:\n")
        print(tt)
    wt = workers_table(summary, variants)
    if wt:
        print(f"\n--workers N, fan-in against one worker (this machine "
              f"has {meta['cpus']} CPUs; the load client needs about one):\n")
        print(wt)
    print("\nTargets (ratios are medians of this run, ours / peer; the 9,000-connection "
          "figures are wsrouter's worst round):\n")
    print(goals_table(summary))
