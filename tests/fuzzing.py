"""
The hypothesis budget of the property tests (tests/test_fuzz_*.py).

Each test runs C{examples} examples (scaled by C{FUZZ_EXAMPLES_SCALE}, e.g.
10 for a longer local run), with no per-example deadline (the machine is
shared) and hypothesis' database off, so a run depends on nothing left
behind by an earlier one.  Findings are kept as C{@example}s.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("FUZZ_EXAMPLES_SCALE", "1"))


def budget(examples: int) -> Any:
    """Hypothesis settings for C{examples} examples, scaled."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
