"""CPU time and memory of a process and all its descendants, read from Linux ``/proc``.

Memory (:func:`tree_memory`) is a plain sum over the live processes of the tree, of
``VmRSS`` and of ``Pss``; see :class:`TreeMemory` for why both.  The rest of this
docstring is about CPU.

Why this is more than ``utime + stime`` of one PID: websockify forks one process per
connection, and those processes exit (and are reaped by websockify) at the end of each
connection.  When a process exits and its parent ``wait()``\\ s for it, the kernel adds
its ``utime + stime + cutime + cstime`` to the parent's ``cutime``/``cstime``.  So for a
tree rooted at ``root``:

    tree CPU = sum over every *live* process P in the tree of
               own CPU(P) + cutime(P) + cstime(P)

counts each CPU-second once: live processes directly, reaped ones through the
``cutime``/``cstime`` of whoever reaped them.

*Own CPU* of a live process is read in nanoseconds from
``/proc/<pid>/task/<tid>/schedstat`` (first field: time on CPU) summed over its threads;
the reaped part is only available in clock ticks (``SC_CLK_TCK``, normally 100/s).  The
difference of two readings is therefore:

* exact (ns) for processes alive at both readings, and for processes born in between
  (they start from zero);
* accurate to one tick (10 ms) for processes that exited and were reaped in between;
* blind to a process that has exited but is not yet reaped at the second reading, whose
  time is taken from its ``/proc/<pid>/stat`` instead (ticks), and to threads of a live
  process that ended in between (not an issue for the relays measured here).

Callers take their readings when the tree is quiet (see :func:`wait_settled`) or while
connections are open and nothing is exiting.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_NS = 1_000_000_000 // CLK_TCK


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
    """The processes of the tree rooted at ``root`` (root first); empty if root is gone."""
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


def _threads_runtime_ns(pid: int) -> int | None:
    """On-CPU ns summed over the live threads of ``pid``; None if unreadable."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total


def _own_ns(st: ProcStat) -> int:
    """A process's own CPU: ns from schedstat while it runs, ticks from stat for zombies."""
    if st.state != "Z":
        ns = _threads_runtime_ns(st.pid)
        if ns is not None:
            return ns
    return (st.utime + st.stime) * TICK_NS


@dataclass(frozen=True)
class TreeSample:
    """CPU of a process tree at one instant (see the module docstring)."""

    cpu_ns: int
    sys_s: float
    processes: int
    alive: bool

    @property
    def cpu_s(self) -> float:
        return self.cpu_ns / 1e9


def sample(root: int) -> TreeSample:
    """CPU used so far by ``root`` and all its descendants.

    ``sys_s`` (system time, from the tick counters) is for the user/system split only.
    """
    procs = tree(root, all_stats())
    cpu = sum(_own_ns(p) + (p.cutime + p.cstime) * TICK_NS for p in procs)
    system = sum(p.stime + p.cstime for p in procs)
    return TreeSample(
        cpu_ns=cpu,
        sys_s=system / CLK_TCK,
        processes=len(procs),
        alive=bool(procs) and procs[0].state != "Z",
    )


def wait_settled(root: int, max_wait_s: float = 5.0, quiet_s: float = 0.15) -> TreeSample:
    """Wait until the tree has no descendants left and its CPU stops moving, then sample.

    "Settled" means: only the root remains (per-connection children exited and were
    reaped) and its CPU grew by less than 1 ms during ``quiet_s``.  Gives up after
    ``max_wait_s`` and returns the last sample; the caller can see ``processes > 1``.
    """
    deadline = time.monotonic() + max_wait_s
    ref = cur = sample(root)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        cur = sample(root)
        if cur.cpu_ns - ref.cpu_ns > 1_000_000 or cur.processes != ref.processes:
            ref, stable_since = cur, time.monotonic()
        elif cur.processes <= 1 and time.monotonic() - stable_since >= quiet_s:
            break
    return cur


def peak_rss_kib(pid: int) -> int:
    """High-water mark of resident memory (VmHWM) of one process, in KiB; 0 if unknown."""
    return _status_kib(pid, "VmHWM")


def _status_kib(pid: int, field: str) -> int:
    """One ``kB`` field (e.g. ``VmRSS``) of ``/proc/<pid>/status``; 0 if absent or gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size of one process (``/proc/<pid>/smaps_rollup``), KiB; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


@dataclass(frozen=True)
class TreeMemory:
    """Resident memory of a process tree at one instant, in KiB, and its process count.

    ``rss_kib`` sums VmRSS over the tree: pages shared between processes (a forked
    child shares the interpreter and libraries with its parent until written) are
    counted once per process, so for a forking relay it overestimates.  ``pss_kib``
    sums the proportional set size instead, where each shared page is divided among
    the processes sharing it: the tree's fair share of physical memory.
    """

    rss_kib: int
    pss_kib: int
    processes: int


def tree_memory(root: int) -> TreeMemory:
    """VmRSS and Pss summed over ``root`` and its live (non-zombie) descendants."""
    procs = [p for p in tree(root, all_stats()) if p.state != "Z"]
    return TreeMemory(
        rss_kib=sum(_status_kib(p.pid, "VmRSS") for p in procs),
        pss_kib=sum(_pss_kib(p.pid) for p in procs),
        processes=len(procs),
    )
