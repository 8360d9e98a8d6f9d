"""
The operator's side in a real browser (headless Debian Chromium through
Selenium, tests/browser.py): noVNC's own vnc_lite.html through the router to
x11vnc on Xvfb, and the live status page.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import browser  # noqa: F401  (the fixture)
from tests.listening import reachable_listeners, wrapped_pid
from tests.support import RouterProcess, connect, free_port

NOVNC = Path("/usr/share/novnc")
#: noVNC's vnc_lite.html runs an inline module script: the web root's policy must allow inline scripts.
NOVNC_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
             "style-src 'self' 'unsafe-inline'")


def wait_until(condition: Any, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.1)


@pytest.fixture
def white_display() -> Iterator[str]:
    """An Xvfb display whose root window is solid white (-wr)."""
    if not shutil.which("Xvfb") or not shutil.which("x11vnc"):
        pytest.skip("Xvfb/x11vnc not installed: `make test` installs them as root with apt reachable")
    for number in range(110, 130):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    else:
        pytest.skip("no free X display number")
    xvfb = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "320x240x24", "-wr", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: Path(f"/tmp/.X11-unix/X{number}").exists(), 10, "Xvfb socket")
        yield f":{number}"
    finally:
        xvfb.terminate()
        xvfb.wait(10)


CANVAS_PIXEL = """
const canvas = document.querySelector('#screen canvas');
if (!canvas || canvas.width === 0) return null;
const data = canvas.getContext('2d').getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data;
return [canvas.width, canvas.height, data[0], data[1], data[2], data[3]];
"""


def test_novnc_shows_the_root_windows_colour(tmp_path: Path, white_display: str, browser: Any) -> None:  # noqa: F811
    """noVNC's vnc_lite.html shows x11vnc's white root window through the router, x11vnc reachable only through it."""
    if not (NOVNC / "vnc_lite.html").exists():
        pytest.skip("Debian's novnc is not installed (tests/setup/system-deps.sh)")
    port = free_port()
    config = tmp_path / "wsrouter.toml"
    config.write_text(f'[web]\nroot = "{NOVNC}"\ncontent_security_policy = "{NOVNC_CSP}"\n')
    program = ["x11vnc", "-display", white_display, "-rfbport", str(port), "-rfbportv6", str(port), "-forever",
               "-shared", "-nopw", "-quiet"]
    router = RouterProcess(["--config", str(config), "--wrap", "respawn", str(port), "--", *program], port,
                           tmp_path / "router.log")
    try:
        browser.get(f"http://127.0.0.1:{port}/vnc_lite.html")
        pixel = wait_until(lambda: _white(browser.execute_script(CANVAS_PIXEL)), 30, "a white canvas")
        assert pixel[:2] == [320, 240]  # the display's size: the framebuffer came from x11vnc
        status = browser.find_element("id", "status").text
        assert "Connected" in status, status
        assert reachable_listeners(wrapped_pid(router.log(), "x11vnc")) == []  # not its own IPv6 port 5900 either
    finally:
        router.stop()
    assert "session" in router.log() and "open:" in router.log()


def _white(pixel: list[int] | None) -> list[int] | None:
    return pixel if pixel and pixel[2:] == [255, 255, 255, 255] else None


STATUS_ROWS = "return [...document.querySelectorAll('#sessions tbody tr')].map(r => r.dataset.session);"


def metric(port: int, line_start: str) -> float:
    """The value of the first sample line of /metrics starting with C{line_start} (0 if none)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.split()[-1])
    return 0.0


def test_status_page_lists_a_session_and_drops_it(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    """The status page shows an open session live (with its watch link), drops it when it closes; metrics move."""
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/e=echo:",
                            "--status", "/status", "--metrics", "/metrics"], port, tmp_path / "router.log")
    try:
        browser.get(f"http://127.0.0.1:{port}/status")
        wait_until(lambda: "live" in browser.find_element("id", "state").text, 15, "the live feed")
        assert browser.execute_script(STATUS_ROWS) == []
        before = metric(port, 'wsrouter_sessions_total{route="/e"}')
        with connect(f"ws://127.0.0.1:{port}/e") as ws:
            ws.send(b"status")
            ws.recv(timeout=10)
            (session_id,) = wait_until(lambda: browser.execute_script(STATUS_ROWS), 15, "the session listed")
            link = browser.find_element("css selector", f'tr[data-session="{session_id}"] a')
            assert link.get_attribute("href").endswith(f"/status/watch/{session_id}")
            row = browser.find_element("css selector", f'tr[data-session="{session_id}"]').text
            assert "/e" in row and "echo:" in row and "127.0.0.1" in row
            assert metric(port, 'wsrouter_sessions_open{route="/e"}') == 1
        wait_until(lambda: browser.execute_script(STATUS_ROWS) == [], 15, "the session dropped")
        assert metric(port, 'wsrouter_sessions_total{route="/e"}') == before + 1
        assert metric(port, 'wsrouter_bytes_to_client_total{route="/e"}') == len(b"status")
    finally:
        router.stop()


def test_watch_page_shows_what_the_session_gets(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    """The watch page linked from the status page shows the target's output to the watched client."""
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/e=echo:",
                            "--status", "/status"], port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/e") as ws:
            browser.get(f"http://127.0.0.1:{port}/status")
            (session_id,) = wait_until(lambda: browser.execute_script(STATUS_ROWS), 15, "the session listed")
            browser.find_element("css selector", f'tr[data-session="{session_id}"] a').click()
            wait_until(lambda: browser.find_element("id", "state").text == "watching", 15, "the watch page")
            ws.send("hello from the session")
            ws.recv(timeout=10)
            wait_until(lambda: "hello from the session" in browser.execute_script("return watch.screen()"), 15,
                       "the session's output on the watch page")
            assert browser.execute_script("return watch.writable()") is False  # read-only: typing goes nowhere
    finally:
        router.stop()
