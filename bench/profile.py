"""Fold py-spy raw profiles (``bench/run.py --profile DIR``) into the hottest functions.

Usage: .venv/bin/python bench/profile.py FILE... [--top N] [--lines]

py-spy's raw format is one line per distinct stack, ``frame;frame;...;frame COUNT``,
each frame ``function (file:line)``.  This prints, as a share of the busy samples,
each function's self time (the innermost frame) and inclusive time (anywhere on the
stack, counted once per sample).  Samples whose innermost frame is the reactor's
``epoll_wait`` (``EPollReactor.doPoll`` at its poll line) are idle and reported
apart.  Without ``--lines`` frames are grouped by function and file, ignoring the line.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def frame_key(frame: str, lines: bool) -> str:
    return frame if lines else _LINE.sub(")", frame)


def is_idle(stack: list[str]) -> bool:
    """The reactor waiting in epoll: the innermost frame is doPoll's poll call."""
    return bool(stack) and stack[-1].startswith("EPollReactor.doPoll") and "epollreactor.py" in stack[-1] \
        and any(f.startswith("ReactorBase.mainLoop") for f in stack[-3:])


def fold(paths: list[Path], lines: bool) -> tuple[Counter[str], Counter[str], int, int]:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    busy = idle = 0
    for path in paths:
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack_text, _, count = raw.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            stack = stack_text.split(";")
            if is_idle(stack):
                idle += n
                continue
            busy += n
            keys = [frame_key(f, lines) for f in stack]
            self_c[keys[-1]] += n
            for k in set(keys):
                incl[k] += n
    return self_c, incl, busy, idle


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--lines", action="store_true", help="keep line numbers (one row per line)")
    args = ap.parse_args(argv)
    self_c, incl, busy, idle = fold(args.files, args.lines)
    if not busy:
        print("no busy samples")
        return 1
    print(f"{busy} busy samples, {idle} idle (epoll_wait) samples; shares of busy samples\n")
    print("self %  function")
    for k, n in self_c.most_common(args.top):
        print(f"{100 * n / busy:6.1f}  {k}")
    print("\ninclusive %  function")
    for k, n in incl.most_common(args.top):
        print(f"{100 * n / busy:6.1f}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
