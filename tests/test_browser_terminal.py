"""
The bundled terminal page (wstelnet.html on xterm.js) in headless Chromium
(tests/browser.py), against router processes: a bash on a pty behind a
token (the ``make run`` headline), netkit's telnetd wrapped as users wrap
it, and loopback TCP servers that record what the page sends.  Skipped,
saying why, where the browser or telnetd is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import browser  # noqa: F401  (the fixture)
from .support import REPO, RouterProcess, free_port
from .test_real_programs import TELNETD, self_signed_pem

IAC, DO, WILL, SB, SE, NAWS = 255, 253, 251, 250, 240, 31
TIMEOUT = 30.0


# -- helpers -------------------------------------------------------------------------------------


def wait_for(driver: Any, script: str, check: Any = bool, timeout: float = TIMEOUT) -> Any:
    """Run C{script} in the page until C{check} accepts its value; fail saying what was last seen."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if check(value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"{script!r} never satisfied the check; last value {value!r}")


def screen_shows(driver: Any, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
    """Wait until the terminal's text matches C{pattern}; the match."""
    text = wait_for(driver, "return window.wstelnet ? wstelnet.screen() : ''",
                    lambda text: re.search(pattern, text or ""), timeout)
    match = re.search(pattern, text)
    assert match is not None
    return match


def type_keys(driver: Any, text: str) -> None:
    """Type into the terminal as a user would (xterm.js reads keys from its helper textarea)."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "textarea.xterm-helper-textarea").send_keys(text)


def terminal_size(driver: Any) -> tuple[int, int]:
    columns, rows = driver.execute_script("return [wstelnet.term.cols, wstelnet.term.rows]")
    return columns, rows


def resize_window(driver: Any, width: int, height: int) -> tuple[int, int]:
    """Resize the browser window and wait for the terminal to follow; its new (columns, rows)."""
    before = terminal_size(driver)
    driver.set_window_size(width, height)
    wait_for(driver, "return [wstelnet.term.cols, wstelnet.term.rows]", lambda size: tuple(size) != before)
    return terminal_size(driver)


@pytest.fixture
def shell_router(tmp_path: Path) -> Iterator[tuple[RouterProcess, str]]:
    """The make-run set-up: web root, terminal page, a bash on a pty behind a random token."""
    token = secrets.token_urlsafe(24)
    (tmp_path / "tokens").write_text(token + "\n")
    config = tmp_path / "demo.toml"
    config.write_text(f"""
pass_env = ["HOME", "LANG"]
[web]
root = {json.dumps(str(REPO / "examples" / "web"))}
[terminal]
mount = "/term/"
[auth.demo]
tokens = {json.dumps(str(tmp_path / "tokens"))}
[[routes]]
path = "/shell"
target = "exec:{shutil.which('bash') or 'sh'} --norc --noprofile"
pty = true
auth = "demo"
env = {{ PS1 = "ready$ " }}
[[routes]]
path = "/echo"
target = "echo:"
""")
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--config", str(config)],
                           port, tmp_path / "router.log")
    try:
        yield router, token
    finally:
        router.stop()
    assert token not in router.log(), "the token was logged"


class TelnetishServer:
    """A loopback TCP server that asks for NAWS like telnetd, greets, and records every byte it receives."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(TIMEOUT)
            connection.sendall(bytes((IAC, DO, NAWS)) + b"greetings from the server\r\n")
            while True:
                try:
                    data = connection.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.received += data

    def data(self) -> bytes:
        with self.lock:
            return bytes(self.received)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(TIMEOUT)


def naws_reports(data: bytes) -> list[tuple[int, int]]:
    """The window sizes in the NAWS subnegotiations of C{data} (no 255 in these sizes)."""
    return [(w1[0] * 256 + w2[0], h1[0] * 256 + h2[0]) for w1, w2, h1, h2 in
            re.findall(rb"\xff\xfa\x1f(.)(.)(.)(.)\xff\xf0", data, re.S)]


def wait_until(check: Any, what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- the pty shell (make run's headline) ----------------------------------------------------------


def test_pty_shell_runs_commands_and_follows_resizes(browser, shell_router):  # noqa: F811
    """The demo page's shell: a command's output appears, and after a window resize `stty size` prints the new size."""
    router, token = shell_router
    browser.get(f"http://127.0.0.1:{router.port}/term/wstelnet.html?path=/shell&mode=pty&connect=1#token={token}")
    screen_shows(browser, r"ready\$ ")
    type_keys(browser, "echo sum=$((6*7))\n")
    screen_shows(browser, r"sum=42")
    columns, rows = resize_window(browser, 700, 420)
    wait_for(browser, "return wstelnet.sent.resize", lambda sent: sent and tuple(sent[-1]) == (columns, rows))
    type_keys(browser, "stty size\n")
    screen_shows(browser, rf"\n{rows} {columns}\s")


def test_demo_index_opens_the_shell(browser, shell_router):  # noqa: F811
    """The page at / (examples/web) opens the shell in its frame with the token from its own #fragment."""
    router, token = shell_router
    browser.get(f"http://127.0.0.1:{router.port}/#token={token}")
    browser.switch_to.frame("shell")
    screen_shows(browser, r"ready\$ ")
    type_keys(browser, "echo from-$((1+1))-frame\n")
    screen_shows(browser, r"from-2-frame")


def test_pty_shell_without_the_token_is_refused(browser, shell_router):  # noqa: F811
    """Without the token the page's connection is refused (401) and it says the connection failed."""
    router, _ = shell_router
    browser.get(f"http://127.0.0.1:{router.port}/term/wstelnet.html?path=/shell&mode=pty&connect=1")
    wait_for(browser, "return document.getElementById('status').textContent",
             lambda text: text.startswith("closed: connection failed"))
    wait_until(lambda: "401 credentials required" in router.log(), "the refusal's log line")


# -- telnet ---------------------------------------------------------------------------------------


def telnetd_missing() -> str | None:
    if not TELNETD.exists():
        return "netkit telnetd not available: `make test` fetches it (telnetd-ssl) as root with apt reachable"
    if os.geteuid() != 0:
        return "telnetd's login needs root"
    return None


@pytest.fixture
def telnetd_router(tmp_path: Path) -> Iterator[Any]:
    """Start `wsrouter --wrap respawn PORT -- in.telnetd -debug PORT [-L LOGIN]` with the terminal page mounted."""
    reason = telnetd_missing()
    if reason:
        pytest.skip(reason)
    cert = tmp_path / "telnetd.pem"
    self_signed_pem(cert)
    routers: list[RouterProcess] = []

    def start(login: str = "/bin/login") -> RouterProcess:
        port = free_port()
        program = [str(TELNETD), "-debug", str(port), "-L", login, "-z", f"cert={cert}"]
        router = RouterProcess(["--terminal", "/term/", "--wrap", "respawn", str(port), "--", *program],
                               port, tmp_path / f"router{len(routers)}.log")
        routers.append(router)
        return router

    try:
        yield start
    finally:
        for router in routers:
            router.stop()


def test_wstelnet_logs_in_to_telnetd(browser, telnetd_router):  # noqa: F811
    """wstelnet.html against wrapped telnetd: the login prompt appears, and a typed name reaches login."""
    router = telnetd_router()
    browser.get(f"http://127.0.0.1:{router.port}/term/wstelnet.html?mode=telnet&connect=1")
    screen_shows(browser, r"login: ")
    type_keys(browser, "nobody-here\n")
    screen_shows(browser, r"Password: ")


def test_telnetd_session_sees_naws_resizes(browser, telnetd_router, tmp_path):  # noqa: F811
    """Through telnetd, the program on its pty gets the page's window size (NAWS), and the new one after a resize."""
    login = tmp_path / "fake-login"
    login.write_text("""#!/bin/sh
printf 'fake login: '
read name
trap 'echo "size $(stty size) now"' WINCH
echo "hello $name, size $(stty size) now"
i=0
while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
""")
    login.chmod(0o755)
    router = telnetd_router(str(login))
    browser.get(f"http://127.0.0.1:{router.port}/term/wstelnet.html?mode=telnet&connect=1")
    screen_shows(browser, r"fake login: ")
    type_keys(browser, "tester\n")
    columns, rows = terminal_size(browser)
    screen_shows(browser, rf"hello tester, size {rows} {columns} now")
    columns, rows = resize_window(browser, 720, 430)
    screen_shows(browser, rf"\nsize {rows} {columns} now")


def test_telnet_mode_sends_naws_to_a_tcp_target(browser, tmp_path):  # noqa: F811
    """In telnet mode the page answers DO NAWS with WILL NAWS and its size, then reports each resize (seen at TCP)."""
    server = TelnetishServer()
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--terminal", "/term/",
                            "--route", f"/t=tcp://127.0.0.1:{server.port}"], port, tmp_path / "router.log")
    try:
        browser.get(f"http://127.0.0.1:{port}/term/wstelnet.html?path=/t&mode=telnet&connect=1")
        screen_shows(browser, r"greetings from the server")
        first = wait_until(lambda: naws_reports(server.data()), "the first NAWS")
        assert bytes((IAC, WILL, NAWS)) in server.data()
        assert first[0] == terminal_size(browser)
        size = resize_window(browser, 640, 400)
        wait_until(lambda: size in naws_reports(server.data()), f"NAWS {size}")
        type_keys(browser, "hi\n")
        wait_until(lambda: b"hi\r\x00" in server.data(), "the typed line, CR NUL as telnet wants")
    finally:
        router.stop()
        server.close()


def test_raw_mode_with_a_plain_stream_target(browser, tmp_path):  # noqa: F811
    """In raw mode the page shows a TCP target's bytes and sends typed bytes unchanged (no telnet answers)."""
    server = TelnetishServer()
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--terminal", "/term/",
                            "--route", f"/t=tcp://127.0.0.1:{server.port}"], port, tmp_path / "router.log")
    try:
        browser.get(f"http://127.0.0.1:{port}/term/wstelnet.html?path=/t&mode=raw&connect=1")
        screen_shows(browser, r"greetings from the server")
        type_keys(browser, "plain\n")
        wait_until(lambda: b"plain\r" in server.data(), "the typed line")
        assert server.data() == b"plain\r"
    finally:
        router.stop()
        server.close()


# -- telnet.js on its own (in the browser, no server) ------------------------------------------------

TELNET_CHECK = """
const feed = (t, bytes, oneByOne) => {
  let data = [], reply = [];
  const chunks = oneByOne ? bytes.map((b) => [b]) : [bytes];
  for (const chunk of chunks) {
    const out = t.receive(Uint8Array.from(chunk));
    data.push(...out.data); reply.push(...out.reply);
  }
  return {data, reply};
};
const input = arguments[0];
const results = [];
for (const oneByOne of [false, true]) {
  const t = new Telnet("xterm-256color");
  t.resize(300, 40);
  results.push(feed(t, input, oneByOne));
  results.push({resize: Array.from(t.resize(255, 24)), send: Array.from(t.send(Uint8Array.from([13, 255, 13, 10])))});
}
return results;
"""


def test_telnet_negotiation_whole_and_byte_by_byte(browser, tmp_path):  # noqa: F811
    """telnet.js answers the same fed whole or one byte at a time: accepts ECHO/SGA/TTYPE/NAWS, refuses the rest."""
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--terminal", "/term/",
                            "--route", "/e=echo:"], port, tmp_path / "router.log")
    server = [IAC, WILL, 1, IAC, WILL, 3, IAC, WILL, 5,          # ECHO, SGA: yes; STATUS: no
              IAC, DO, 24, IAC, DO, NAWS, IAC, DO, 39,           # TTYPE, NAWS: yes; NEW-ENVIRON: no
              IAC, WILL, 1,                                      # again: no answer (no loop)
              IAC, SB, 24, 1, IAC, SE,                           # TERMINAL-TYPE SEND
              ord("h"), IAC, IAC, ord("i"), IAC, 241]            # data with a doubled 255, then a NOP
    try:
        browser.get(f"http://127.0.0.1:{port}/term/wstelnet.html")
        whole, whole_after, single, single_after = browser.execute_script(TELNET_CHECK, server)
    finally:
        router.stop()
    assert whole == single
    assert whole_after == single_after
    assert bytes(whole["data"]) == b"h\xffi"
    assert bytes(whole["reply"]) == (
        bytes((IAC, DO, 1, IAC, DO, 3, IAC, 254, 5, IAC, WILL, 24, IAC, WILL, NAWS))
        + bytes((IAC, SB, NAWS, 1, 44, 0, 40, IAC, SE))                  # 300 x 40 at once
        + bytes((IAC, 252, 39)) + bytes((IAC, SB, 24, 0)) + b"xterm-256color" + bytes((IAC, SE))
    )
    assert bytes(whole_after["resize"]) == bytes((IAC, SB, NAWS, 0, 255, 255, 0, 24, IAC, SE))
    assert bytes(whole_after["send"]) == bytes((13, 0, 255, 255, 13, 10))
