#!/usr/bin/env python3
"""atheris target: the client frame parser (ws/parser.py), any bytes cut anywhere, deflate on or off."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["wsrouter", "fuzz"]):
    from fuzz.checks import check_parser_any_bytes
    from fuzz.harness import cuts, run


def one_input(provider: atheris.FuzzedDataProvider) -> None:
    max_size = provider.PickValueInList([0, 0, 1, 64, 1000])
    deflate = provider.ConsumeBool()
    split = cuts(provider)
    check_parser_any_bytes(provider.ConsumeBytes(4096), split, max_size, deflate)


if __name__ == "__main__":
    run(one_input)
