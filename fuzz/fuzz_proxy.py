#!/usr/bin/env python3
"""
atheris target: PROXY protocol headers (proxyproto.py), v1 and v2: the
parser on any first bytes, headers the router builds read back, and the
reader in front of a listener fed the bytes cut anywhere.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["wsrouter", "fuzz"]):
    from fuzz.checks import check_proxy_header, check_proxy_round_trip, check_proxy_stream
    from fuzz.harness import cuts, run
    from wsrouter.proxyproto import V1_PREFIX, V2_SIGNATURE

#: What a connection's first bytes start with: nothing, the v1 prefix, the v2 signature and a v2 version/command.
STARTS = [b"", V1_PREFIX, V1_PREFIX + b"TCP4 ", V1_PREFIX + b"TCP6 ", V1_PREFIX + b"UNKNOWN", V2_SIGNATURE,
          V2_SIGNATURE + b"\x21", V2_SIGNATURE + b"\x20"]


def _address(provider: atheris.FuzzedDataProvider, v6: bool) -> tuple[str, int]:
    import ipaddress

    raw = provider.ConsumeBytes(16 if v6 else 4).ljust(16 if v6 else 4, b"\0")
    host = str(ipaddress.IPv6Address(raw) if v6 else ipaddress.IPv4Address(raw))
    return host, provider.ConsumeIntInRange(0, 65535)


def one_input(provider: atheris.FuzzedDataProvider) -> None:
    surface = provider.ConsumeIntInRange(0, 2)
    if surface == 0:
        check_proxy_header(provider.PickValueInList(STARTS) + provider.ConsumeBytes(300))
    elif surface == 1:
        version = provider.PickValueInList(["v1", "v2"])
        source = _address(provider, provider.ConsumeBool())
        destination = _address(provider, provider.ConsumeBool())
        check_proxy_round_trip(version, source, destination, provider.ConsumeBytes(40))
    else:
        split = cuts(provider)
        check_proxy_stream(provider.PickValueInList(STARTS) + provider.ConsumeBytes(300), split)


if __name__ == "__main__":
    run(one_input)
