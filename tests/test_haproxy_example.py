"""
examples/haproxy.cfg as the README offers it: a real HAProxy in front of two
real router processes on loopback, balancing WebSocket connections,
keeping a client that returns with its cookie on the same instance, and
telling the routers the real client address with a PROXY v2 header.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import ExitStack

import pytest

from .support import REPO, RouterProcess, child_env, connect, free_port, wait_for_port

EXAMPLE = REPO / "examples" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))

pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (as root, `make test` installs it: tests/setup/system-deps.sh)")


def sessions_opened(router: RouterProcess) -> int:
    return len(re.findall(r"session \w+ open:", router.log()))


def echo(ws, payload: bytes) -> None:
    ws.send(payload)
    assert ws.recv(timeout=10) == payload


def test_example_config_is_valid():
    """HAProxy accepts the example as it is, with its default addresses."""
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(EXAMPLE)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_balances_and_sticks_websockets_over_two_routers(tmp_path):
    """
    Through the example config, held WebSocket connections are spread over both routers, and the WSROUTER cookie
    keeps a client on one.
    """
    front, ports = free_port(), [free_port(), free_port()]
    with ExitStack() as stack:
        routers = []
        for n, port in enumerate(ports, 1):
            router = RouterProcess(["--proxy-listen", f"tcp:{port}:interface=127.0.0.1", "--trusted-proxy", "127.0.0.1",
                                    "--route", "/*=echo:"], port, tmp_path / f"router{n}.log")
            stack.callback(router.stop)
            routers.append(router)
        env = child_env(WSROUTER_LISTEN=f"127.0.0.1:{front}", WSROUTER_1=f"127.0.0.1:{ports[0]}",
                        WSROUTER_2=f"127.0.0.1:{ports[1]}")
        log_path = tmp_path / "haproxy.log"
        with open(log_path, "wb") as log:
            haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(EXAMPLE)], stdout=log, stderr=subprocess.STDOUT,
                                       env=env, cwd=tmp_path)
        stack.callback(_stop, haproxy)
        wait_for_port(front)
        url = f"ws://127.0.0.1:{front}/anything"

        held = [stack.enter_context(connect(url)) for _ in range(10)]
        for n, ws in enumerate(held):
            echo(ws, b"held %d" % n)
        opened = [sessions_opened(router) for router in routers]
        assert sum(opened) == 10 and min(opened) >= 4, (opened, log_path.read_text())
        cookies = {ws.response.headers.get("Set-Cookie", "").split(";")[0] for ws in held}
        assert cookies == {"WSROUTER=r1", "WSROUTER=r2"}, cookies
        # The routers name each client by its own address and port (from the PROXY header), not HAProxy's.
        logged = {int(port) for router in routers
                  for port in re.findall(r"session \S+ open: 127\.0\.0\.1:(\d+) ", router.log())}
        assert logged == {ws.local_address[1] for ws in held}, (logged, routers[0].log())

        for n in range(6):  # more than leastconn alone would send to r2
            with connect(url, additional_headers={"Cookie": "WSROUTER=r2"}) as ws:
                echo(ws, b"sticky %d" % n)
        assert [sessions_opened(router) for router in routers] == [opened[0], opened[1] + 6]
        assert haproxy.poll() is None


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
