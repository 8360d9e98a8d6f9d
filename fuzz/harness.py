"""
What every atheris target shares: instrumented imports of wsrouter and
the checks, and the entry point (libFuzzer's options pass through).

A target is a module with C{one_input(provider)}; a finding is any
exception out of it (an C{AssertionError} from L{fuzz.checks} or an
unexpected error from wsrouter).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import atheris


def run(one_input: Callable[[Any], None]) -> None:
    """Fuzz C{one_input} with a L{atheris.FuzzedDataProvider} per input."""

    def test_one_input(data: bytes) -> None:
        one_input(atheris.FuzzedDataProvider(data))

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def cuts(provider: Any, count: int = 8) -> list[int]:
    return [provider.ConsumeIntInRange(0, 1 << 16) for _ in range(provider.ConsumeIntInRange(0, count))]
