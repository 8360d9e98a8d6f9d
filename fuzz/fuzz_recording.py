#!/usr/bin/env python3
"""atheris target: the recording reader (parse_recording), any lines."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["wsrouter", "fuzz"]):
    from fuzz.checks import check_recording_lines
    from fuzz.harness import run


def one_input(provider: atheris.FuzzedDataProvider) -> None:
    check_recording_lines(provider.ConsumeBytes(4096).splitlines(keepends=True))


if __name__ == "__main__":
    run(one_input)
