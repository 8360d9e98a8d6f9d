"""
Run the atheris targets (fuzz/fuzz_*.py) one after another, each for a
bounded time, starting from its seed corpus (fuzz/corpus/NAME) and the
inputs earlier runs found (.cache/fuzz/NAME/corpus).

    python fuzz/run.py [--seconds N] [--seed S] [NAME ...]   # FUZZ_SECONDS, FUZZ_SEED the defaults

A seed fixes libFuzzer's random choices and Python's hash seed, but not the
coverage feedback, so two seeded runs still differ: keep long runs' findings
in fuzz/corpus so that CI starts from them.

A crash (any exception out of a check) leaves its input as
.cache/fuzz/NAME/crash-*; replay it with ``python fuzz/fuzz_NAME.py FILE``.
The exit status is 1 if any target found something, else 0.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def run_target(name: str, seconds: int, cache: Path, seed: int | None = None) -> bool:
    """Fuzz one target for C{seconds}; True when it found nothing."""
    work = cache / name
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = HERE / "corpus" / name
    command = [
        sys.executable, str(HERE / f"fuzz_{name}.py"), f"-max_total_time={seconds}", "-timeout=20",
        "-rss_limit_mb=2048", f"-artifact_prefix={work}/", "-print_final_stats=1",
        *([f"-seed={seed}"] if seed is not None else []), str(corpus),
        *([str(seeds)] if seeds.is_dir() else []),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    if seed is not None:
        # Hash randomisation changes set and dict order, hence coverage, hence the inputs tried.
        env["PYTHONHASHSEED"] = str(seed)
    log_path = work / "log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            status = process.wait(seconds + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            status = -9
    text = log_path.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    cov = re.findall(r"cov: (\d+)", text)
    found = re.findall(r"Test unit written to (\S+)", text)
    print(f"{name}: {runs[-1] if runs else '?'} inputs in {time.monotonic() - started:.0f} s, "
          f"coverage {cov[-1] if cov else '?'} edges, {len(list(corpus.iterdir()))} in corpus, "
          f"exit {status}", flush=True)
    if status != 0 or found:
        tail = "\n".join(text.splitlines()[-40:])
        print(f"{name}: FOUND a problem; log {log_path}\n{tail}\nreplay: python fuzz/fuzz_{name}.py "
              f"{found[-1] if found else '<artifact>'}", flush=True)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "30")),
                        help="time per target (default: FUZZ_SECONDS or 30)")
    seed = os.environ.get("FUZZ_SEED")
    parser.add_argument("--seed", type=int, default=int(seed) if seed else None,
                        help="libFuzzer's seed, for a repeatable run (default: FUZZ_SEED, else random)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "fuzz")
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], metavar="NAME",
                        help=f"targets to run (default: all: {', '.join(TARGETS)})")
    options = parser.parse_args(argv)
    results = [run_target(name, options.seconds, options.cache, options.seed) for name in options.targets or TARGETS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
