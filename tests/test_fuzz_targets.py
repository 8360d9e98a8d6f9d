"""
The atheris targets (fuzz/fuzz_*.py) stay runnable: each replays its seed
corpus and a few hundred generated inputs without a finding.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .support import REPO, child_env

TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in (REPO / "fuzz").glob("fuzz_*.py"))


def test_every_surface_has_a_target_and_seeds() -> None:
    """The parser, framing, config, handshake, PROXY, resolvers and recording targets exist, each with seeds."""
    assert TARGETS == ["config", "framing", "handshake", "parser", "proxy", "recording", "resolvers"]
    for name in TARGETS:
        assert list((REPO / "fuzz" / "corpus" / name).iterdir()), name


@pytest.mark.parametrize("name", TARGETS)
def test_target_runs_its_seeds_without_a_finding(name: str, tmp_path) -> None:
    """One target over its seeds plus 300 generated inputs exits 0 (a finding exits non-zero)."""
    seeds = REPO / "fuzz" / "corpus" / name
    runs = len(list(seeds.iterdir())) + 300  # libFuzzer counts the seeds it replays as runs
    result = subprocess.run(
        [sys.executable, str(REPO / "fuzz" / f"fuzz_{name}.py"), f"-runs={runs}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(tmp_path), str(seeds)],
        check=False, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Done {runs} runs" in result.stderr + result.stdout
