"""CPU time of a process and all its descendants, read from Linux ``/proc``.

Why this is more than ``utime + stime`` of one PID: websockify forks one process per
connection, and those processes exit (and are reaped by websockify) at the end of
each connection.  A process's own CPU time is visible in ``/proc/<pid>/stat`` while
it lives (fields ``utime``/``stime``, which already include its exited threads).
When it exits and its parent ``wait()``\\ s for it, the kernel adds its
``utime + stime + cutime + cstime`` to the parent's ``cutime``/``cstime``.  So for a
tree rooted at ``root``:

    tree CPU = sum over every *live* process P in the tree of
               utime(P) + stime(P) + cutime(P) + cstime(P)

counts each CPU-second exactly once: live processes directly, reaped ones through the
``cutime``/``cstime`` of whoever reaped them.  The one gap is a child that has exited
but is not yet reaped (a zombie) or that is reaped while we scan; callers therefore
take their "after" sample only once the tree has settled (see :func:`wait_settled`).

Units: the kernel reports clock ticks (``SC_CLK_TCK``, normally 100 per second), so the
resolution is 10 ms per process; workloads are sized to use seconds of CPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this module needs; times in clock ticks."""

    pid: int
    ppid: int
    state: str
    utime: int
    stime: int
    cutime: int
    cstime: int
    starttime: int

    @property
    def ticks(self) -> int:
        """Own CPU plus that of reaped descendants, in clock ticks."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line; the command name may contain spaces and ')'."""
    pid_part, _, rest = text.partition(" (")
    fields = rest.rsplit(") ", 1)[1].split()
    # fields[0] is field 3 (state) of proc(5): utime (14) is fields[11], starttime (22) fields[19].
    return ProcStat(
        pid=int(pid_part),
        ppid=int(fields[1]),
        state=fields[0],
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
        starttime=int(fields[19]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """Return the stat of ``pid``, or None if it no longer exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return parse_stat(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def all_stats() -> dict[int, ProcStat]:
    """Stat of every process visible in /proc, keyed by PID."""
    stats: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                stats[st.pid] = st
    return stats


def tree(root: int, stats: dict[int, ProcStat]) -> list[ProcStat]:
    """The live processes of the tree rooted at ``root`` (root first); empty if root is gone."""
    if root not in stats:
        return []
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out: list[ProcStat] = []
    todo = [root]
    while todo and len(out) < 100_000:
        pid = todo.pop()
        out.append(stats[pid])
        todo.extend(children.get(pid, ()))
    return out


@dataclass(frozen=True)
class TreeSample:
    """CPU of a process tree at one instant."""

    cpu_s: float
    processes: int
    zombies: int
    alive: bool


def sample(root: int) -> TreeSample:
    """CPU seconds used so far by ``root`` and all its descendants (see module docstring)."""
    procs = tree(root, all_stats())
    ticks = sum(p.ticks for p in procs)
    return TreeSample(
        cpu_s=ticks / CLK_TCK,
        processes=len(procs),
        zombies=sum(1 for p in procs if p.state == "Z"),
        alive=bool(procs) and procs[0].state != "Z",
    )


def wait_settled(root: int, max_wait_s: float = 5.0, quiet_s: float = 0.15) -> TreeSample:
    """Wait until the tree has no descendants left and its CPU stops moving, then sample.

    "Settled" means: only the root remains (per-connection children exited and were
    reaped) and the CPU total did not change for ``quiet_s``.  Gives up after
    ``max_wait_s`` and returns the last sample; the caller can see ``processes > 1``.
    """
    deadline = time.monotonic() + max_wait_s
    last = sample(root)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        cur = sample(root)
        if cur.cpu_s != last.cpu_s or cur.processes != last.processes:
            stable_since = time.monotonic()
        last = cur
        if cur.processes <= 1 and time.monotonic() - stable_since >= quiet_s:
            break
    return last


def _task_runtime_ns(pid: int) -> int:
    """On-CPU nanoseconds of every live thread of ``pid`` (first field of schedstat)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total


def live_runtime_ns(root: int) -> int:
    """Nanosecond CPU of the live threads in the tree; for windows where nothing exits.

    More precise than :func:`sample` (no 10 ms truncation per process), but it sees only
    threads alive at the time of reading, so the difference of two readings is right only
    if no process or thread of the tree ended in between.  Used for the steady part of a
    workload, after connections are open and before they close.
    """
    return sum(_task_runtime_ns(p.pid) for p in tree(root, all_stats()) if p.state != "Z")


def peak_rss_kib(pid: int) -> int:
    """High-water mark of resident memory (VmHWM) of one process, in KiB; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0
