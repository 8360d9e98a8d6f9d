"""
The advice a refusal's log line carries fits the refusal's reason, not only its status: a 400 for a bad
per-session query value does not tell the operator to look at subprotocols; the subprotocol 400 still does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from wsrouter.gateway import _hint

from .support import PYTHON, RouterProcess, free_port, handshake_status


@pytest.mark.parametrize(("status", "reason", "expected"), [
    (400, "no acceptable subprotocol for /chat: offered none, this path speaks chat", "subprotocols"),
    (400, "query parameter 'player' must be given once and match [A-Za-z0-9][A-Za-z0-9_-]{0,63}", None),
    (400, "token not present", None),
    (403, "origin https://evil.example not allowed: not in the route's origin list", "origin policy"),
    (403, "client certificate 'CN=x' is not among the accepted names", "client_cert_names"),
    (403, "refused by the handler", None),
    (403, "token expired", None),
    (404, "no route for path /x", "routes"),
    (503, "too many open connections", "retry later"),
])
def test_hint_follows_the_reason(status: int, reason: str, expected: str | None) -> None:
    """A status's hint is given only for the reasons it fits: the 400 hint only for the subprotocol refusal,
    the 403 hint only for origin and client-certificate refusals (not a handler's or a token's)."""
    hint = _hint(status, reason)
    assert (expected in hint) if expected else hint == ""


def refusal_line(log: str, path: str) -> str:
    found = [line for line in log.splitlines() if re.search(rf"refused \S+ {re.escape(path)}: 400 ", line)]
    assert len(found) == 1, log
    return found[0]


def test_log_lines_of_two_400_refusals(tmp_path: Path) -> None:
    """A real router logs a bad query value's 400 without the subprotocol hint, and a subprotocol 400 with it."""
    config = tmp_path / "router.toml"
    config.write_text(
        '[programs.game]\nmode = "per-session"\n'
        f'command = {json.dumps([PYTHON, "-c", "pass", "{query.player}"])}\n\n'
        '[[routes]]\npath = "/g"\ntarget = "program:game"\n\n'
        '[[routes]]\npath = "/chat"\nsubprotocols = ["chat"]\ntarget = "echo:"\n')
    port = free_port()
    router = RouterProcess(["--config", str(config), "--listen", f"tcp:{port}:interface=127.0.0.1"], port,
                           tmp_path / "router.log")
    try:
        assert handshake_status(f"{router.url}/g?player=-rf")[0] == 400
        assert handshake_status(f"{router.url}/chat")[0] == 400
    finally:
        router.stop()
    query = refusal_line(router.log(), "/g")
    assert "query parameter 'player'" in query and "subprotocol" not in query
    assert "(the client must offer one of the route's subprotocols)" in refusal_line(router.log(), "/chat")
