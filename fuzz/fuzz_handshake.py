#!/usr/bin/env python3
"""
atheris target: what wsrouter adds to the handshake: PROXY headers, the
request head limits (LimitedChannel), Origin and Host, credentials, the
route decision.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["wsrouter", "fuzz"]):
    from fuzz.checks import (
        check_authenticate,
        check_host_name,
        check_http_head,
        check_origin,
        check_proxy_header,
        check_route_select,
    )
    from fuzz.harness import cuts, run
    from wsrouter.config.spec import parse_route
    from wsrouter.policy import Credentials

CREDENTIALS = Credentials(
    realm="r", users={"alice": "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="}, tokens=(b"secret-token-1234",),
    forward_header="X-Forwarded-User", forward_from=("10.0.0.0/8",),
)
POLICIES = ["same", "off", ("https://*.example", "http://a.example:8080")]
ROUTES = [parse_route(text) for text in (
    "/=echo:", "/x@chat,superchat=echo:", "/x/*=tcp://127.0.0.1:1", "/v[host=a.example]=echo:",
    "/w[host=*.b.example]@binary=echo:",
)]


def one_input(provider: atheris.FuzzedDataProvider) -> None:
    surface = provider.ConsumeIntInRange(0, 5)
    if surface == 0:
        check_proxy_header(provider.ConsumeBytes(600))
    elif surface == 1:
        max_header_bytes = provider.PickValueInList([64, 200, 8192])
        split = cuts(provider)
        check_http_head(provider.ConsumeBytes(1024), split, max_header_bytes)
    elif surface == 2:
        policy = provider.PickValueInList(POLICIES)
        secure = provider.ConsumeBool()
        host = provider.ConsumeUnicodeNoSurrogates(40)
        check_origin(policy, provider.ConsumeUnicodeNoSurrogates(60), host, secure)
    elif surface == 3:
        peer = provider.PickValueInList(["10.1.2.3", "127.0.0.1", "::1", "unix"])
        headers = {"authorization": provider.ConsumeUnicodeNoSurrogates(80)}
        if provider.ConsumeBool():
            headers["x-forwarded-user"] = provider.ConsumeUnicodeNoSurrogates(20)
        check_authenticate(CREDENTIALS, headers, peer)
    elif surface == 4:
        check_host_name(provider.ConsumeUnicodeNoSurrogates(60))
    else:
        unknown_host = provider.PickValueInList(["default", "421"])
        offered = [provider.ConsumeUnicodeNoSurrogates(8) for _ in range(provider.ConsumeIntInRange(0, 3))]
        host = provider.ConsumeUnicodeNoSurrogates(20) if provider.ConsumeBool() else None
        check_route_select(ROUTES, provider.ConsumeUnicodeNoSurrogates(40), offered, host, unknown_host)


if __name__ == "__main__":
    run(one_input)
