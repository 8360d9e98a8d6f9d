"""
Shared sessions in a real browser (headless Debian Chromium, tests/browser.py):
a bash on a pty opened with wstelnet.html in one browser, watched from the
status page's watch page (xterm.js) in another.  The watcher sees the same
screen, and can type only on a route with ``watch = "write"``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import browser, chromium  # noqa: F401  (the fixture)
from .support import RouterProcess, connect, free_port
from .test_browser_terminal import TIMEOUT, screen_shows, type_keys, wait_for

STATUS_ROWS = "return [...document.querySelectorAll('#sessions tbody tr')].map(r => r.dataset.session);"
TARGET_LINES = "return [...document.querySelectorAll('#routes .target')].map(e => e.textContent);"
#: The visible screen of the session's terminal, as the watch page gives its own (watch.screen()).
SESSION_SCREEN = """
const term = wstelnet.term, buffer = term.buffer.active, lines = [];
for (let i = 0; i < term.rows; i++) lines.push(buffer.getLine(buffer.viewportY + i).translateToString(true));
return lines.join("\\n");
"""


def start_router(tmp_path: Path, watch: str) -> tuple[RouterProcess, str]:
    """A router with the terminal page, the status page and a bash on a pty behind a token."""
    token = secrets.token_urlsafe(24)
    (tmp_path / "tokens").write_text(token + "\n")
    config = tmp_path / "watch.toml"
    config.write_text(f"""
pass_env = ["HOME", "LANG"]
[terminal]
mount = "/term/"
[ops]
status = "/status"
[auth.demo]
tokens = {json.dumps(str(tmp_path / "tokens"))}
[[routes]]
path = "/shell"
target = "exec:{shutil.which('bash') or 'sh'} --norc --noprofile"
pty = true
auth = "demo"
watch = "{watch}"
env = {{ PS1 = "ready$ " }}
""")
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--config", str(config)],
                           port, tmp_path / "router.log")
    return router, token


@pytest.fixture
def watcher() -> Iterator[Any]:
    """A second headless Chromium, for the watcher."""
    with chromium() as driver:
        yield driver


def watch_screen(driver: Any, pattern: str) -> str:
    """Wait until the watch page's terminal shows C{pattern}; its screen."""
    text: str = wait_for(driver, "return window.watch ? watch.screen() : ''",
                         lambda text: re.search(pattern, text or ""))
    return text


def open_watch_page(port: int, session_browser: Any, watcher: Any) -> str:
    """Open the watch page of the one session from the status page; wait until it watches at the session's size."""
    watcher.get(f"http://127.0.0.1:{port}/status")
    (session_id,) = wait_for(watcher, STATUS_ROWS, lambda rows: len(rows or []) == 1)
    watcher.find_element("css selector", f'tr[data-session="{session_id}"] a').click()
    wait_for(watcher, "return window.watch && watch.state()", lambda state: state == "watching")
    size = session_browser.execute_script("return [wstelnet.term.cols, wstelnet.term.rows]")
    wait_for(watcher, "return [watch.term.cols, watch.term.rows]", lambda seen: seen == size)
    return str(session_id)


def same_screens(session_browser: Any, watcher: Any, pattern: str) -> str:
    """Wait until both terminals show C{pattern} and the same visible screen; that screen."""
    screen_shows(session_browser, pattern)
    watch_screen(watcher, pattern)
    last: list[str] = []

    def equal(_: Any) -> bool:
        last[:] = [session_browser.execute_script(SESSION_SCREEN), watcher.execute_script("return watch.screen()")]
        return last[0] == last[1]

    try:
        wait_for(watcher, "return 1", equal)
    except AssertionError:
        raise AssertionError(f"screens differ:\nsession:\n{last[0]}\nwatcher:\n{last[1]}") from None
    return last[0]


@pytest.mark.parametrize("mode", ["read", "write"])
def test_watcher_sees_the_same_screen_and_types_only_if_allowed(tmp_path: Path, browser: Any,  # noqa: F811
                                                                 watcher: Any, mode: str) -> None:
    """A watcher's xterm shows the pty session's screen; its keys reach the shell only with watch = write."""
    router, token = start_router(tmp_path, mode)
    try:
        browser.get(f"http://127.0.0.1:{router.port}/term/wstelnet.html?path=/shell&mode=pty&connect=1#token={token}")
        screen_shows(browser, r"ready\$")
        type_keys(browser, "clear; printf '\\033[1;31mred\\033[0m %s\\n' seen-$((6*7))\n")
        screen_shows(browser, r"seen-42\nready\$ ")
        # The watcher joins after: the session's latest output is replayed to draw the same screen.
        open_watch_page(router.port, browser, watcher)
        screen = same_screens(browser, watcher, r"seen-42\nready\$ ")
        assert screen.startswith("red seen-42")  # cleared, the colour codes rendered, not shown

        type_keys(browser, "seq 1 3\n")
        same_screens(browser, watcher, r"\n3\nready\$ ")

        wait_for(watcher, "return watch.writable()", lambda writable: writable is (mode == "write"))
        type_keys(watcher, "echo typed-$((5+5))\n")
        if mode == "write":
            screen_shows(browser, r"\ntyped-10")
            same_screens(browser, watcher, r"\ntyped-10\nready\$ ")
        else:
            type_keys(browser, "echo after-$((2+2))\n")
            same_screens(browser, watcher, r"\nafter-4\nready\$ ")
            assert "typed-10" not in browser.execute_script("return wstelnet.screen()")
            assert watcher.execute_script("return watch.state()") == "watching"  # not closed with 4003: nothing sent
    finally:
        router.stop()
    assert token not in router.log(), "the token was logged"


def test_watch_page_serves_xterm_under_its_policy(tmp_path: Path, watcher: Any) -> None:
    """The watch page of an unknown session loads the bundled xterm.js (no CSP error) and says the session is gone."""
    router, _ = start_router(tmp_path, "read")
    try:
        watcher.get(f"http://127.0.0.1:{router.port}/status/watch/nosuchsession")
        state = wait_for(watcher, "return window.watch && watch.state()", lambda state: "closed" in (state or ""),
                         TIMEOUT)
        assert "closed" in state
        assert watcher.execute_script("return typeof Terminal") == "function"
    finally:
        router.stop()


def test_status_page_shows_balanced_targets(tmp_path: Path, watcher: Any) -> None:
    """The status page lists a balanced route's targets with their open sessions and marks a dead one down."""
    live_port, dead_port = free_port(), free_port()
    config = tmp_path / "b.toml"
    config.write_text(f"""
[ops]
status = "/status"
[[routes]]
path = "/b"
targets = ["tcp://127.0.0.1:{dead_port}", "tcp://127.0.0.1:{live_port}"]
balance = "round-robin"
down_for = 600
""")
    server = socket.create_server(("127.0.0.1", live_port))
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--config", str(config)],
                           port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/b"):
            server.settimeout(TIMEOUT)
            accepted, _ = server.accept()
            watcher.get(f"http://127.0.0.1:{port}/status")
            lines = wait_for(watcher, TARGET_LINES, lambda lines: lines and "1 open" in lines[-1])
            assert lines == [f"tcp://127.0.0.1:{dead_port}: 0 open, down", f"tcp://127.0.0.1:{live_port}: 1 open"]
            accepted.close()
    finally:
        router.stop()
        server.close()
