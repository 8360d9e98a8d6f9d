#!/usr/bin/env python3
"""atheris target: every framing in fuzz.checks.FRAMINGS, a stream cut anywhere and messages both ways."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["wsrouter", "fuzz"]):
    from fuzz.checks import FRAMINGS, check_framing_round_trip, check_framing_stream
    from fuzz.harness import cuts, run


def one_input(provider: atheris.FuzzedDataProvider) -> None:
    case = FRAMINGS[provider.ConsumeIntInRange(0, len(FRAMINGS) - 1)]
    max_size = provider.ConsumeIntInRange(1, 64)
    split = cuts(provider)
    if provider.ConsumeBool():
        messages = [provider.ConsumeBytes(provider.ConsumeIntInRange(0, 40))
                    for _ in range(provider.ConsumeIntInRange(0, 8))]
        check_framing_round_trip(case, messages, split, max_size)
    else:
        check_framing_stream(case, provider.ConsumeBytes(2048), split, max_size)


if __name__ == "__main__":
    run(one_input)
