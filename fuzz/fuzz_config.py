#!/usr/bin/env python3
"""atheris target: the configuration file (TOML through load_config) and command-line route strings."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["wsrouter", "fuzz"]):
    from fuzz.checks import check_config_file, check_route_string
    from fuzz.harness import run


def one_input(provider: atheris.FuzzedDataProvider) -> None:
    if provider.ConsumeBool():
        check_route_string(provider.ConsumeUnicodeNoSurrogates(200))
    else:
        check_config_file(provider.ConsumeBytes(4096))


if __name__ == "__main__":
    run(one_input)
