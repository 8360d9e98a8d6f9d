"""
The operator's pages, second round: balanced routes' targets (open sessions,
down marks) on the status feed and in /metrics, the worker that answered
under ``--workers``, and a pty session's window size for the watch page.
Over real loopback sockets with the ``websockets`` client.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from tests.support import RecordingTarget, connect, free_port, in_thread, listen_target, start_router
from tests.test_ops import OPS, get, sample
from wsrouter.config import build_config


def _status_snapshot(url: str) -> dict[str, Any]:
    """The first snapshot of the status feed."""
    with connect(url, origin=url.replace("ws://", "http://").split("/status")[0]) as ws:
        data: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return data


@pytest_twisted.inlineCallbacks
def test_balanced_route_targets_on_status_and_metrics():
    """A balanced route's targets show their open sessions and down mark on the status feed and in /metrics."""
    port, _ = listen_target(lambda: RecordingTarget(greeting=b"up"))
    live = f"tcp://127.0.0.1:{port.getHost().port}"
    dead = f"tcp://127.0.0.1:{free_port()}"
    router = start_router(routes=[{"path": "/b", "targets": [dead, live], "balance": "round-robin",
                                   "down_for": 600}], ops=OPS)

    def during() -> tuple[dict[str, Any], str]:
        with connect(router.url + "/b") as ws:
            assert ws.recv(timeout=10) == b"up"
            return _status_snapshot(router.url + "/status/live"), get(router.http + "/metrics")[1]

    try:
        status, text = yield in_thread(during)
        (route,) = status["routes"]
        assert route["targets"] == [{"target": dead, "open": 0, "down": True},
                                    {"target": live, "open": 1, "down": False}]
        assert status["worker"] is None
        assert sample(text, "wsrouter_target_sessions_open", route="/b", target=live) == 1
        assert sample(text, "wsrouter_target_sessions_open", route="/b", target=dead) == 0
        assert sample(text, "wsrouter_target_down", route="/b", target=dead) == 1
        assert sample(text, "wsrouter_target_down", route="/b", target=live) == 0
        _, after = yield in_thread(get, router.http + "/metrics")
        assert sample(after, "wsrouter_target_sessions_open", route="/b", target=live) == 0
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_pty_session_window_size_on_the_status_feed():
    """A pty session's window size, as the client last set it, is on the status feed (None for other sessions)."""
    router = start_router(routes=["/sh[pty=true;auth=off]=exec:cat", "/e=echo:"], ops=OPS)

    def during() -> tuple[Any, Any]:
        with connect(router.url + "/sh") as ws, connect(router.url + "/e") as echo:
            echo.send(b"x")
            echo.recv(timeout=10)
            ws.send(json.dumps({"columns": 123, "rows": 45}).encode())
            for _ in range(100):  # bounded: the control message reaches the pty within a few snapshots
                sessions = {s["path"]: s for s in _status_snapshot(router.url + "/status/live")["sessions"]}
                if sessions["/sh"]["terminal"] == [123, 45]:
                    break
            return sessions["/sh"]["terminal"], sessions["/e"]["terminal"]

    try:
        pty_size, echo_size = yield in_thread(during)
        assert pty_size == [123, 45]
        assert echo_size is None
    finally:
        yield router.stopService()


def test_metrics_say_which_worker_answered() -> None:
    """Under --workers every sample carries the worker's number, and the status snapshot names it too."""
    from twisted.internet.task import Clock

    from wsrouter.gateway import Gateway
    from wsrouter.ops.pages import OpsPages

    clock = Clock()
    pages = OpsPages(Gateway(build_config({"routes": ["/e=echo:"], "ops": OPS}), clock), clock)
    pages.metrics.sessions_total.labels("/e").inc()
    assert sample(pages.metrics.render().decode(), "wsrouter_sessions_total", route="/e") == 1
    pages.set_worker(2)
    text = pages.metrics.render().decode()
    assert sample(text, "wsrouter_sessions_total", route="/e", worker="2") == 1
    assert sample(text, "wsrouter_sessions_total", route="/e") is None
    assert sample(text, "wsrouter_watchers_open", worker="2") == 0
    assert pages.status.snapshot()["worker"] == 2
    pages.stop()


def test_workers_label_their_metrics(tmp_path) -> None:
    """With --workers 2 every /metrics sample names the worker that answered, 1 or 2, and only that one."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support import RouterProcess
    from tests.test_workers import two_workers, wait_for

    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2", "--route", "/e=echo:",
                            "--metrics", "/metrics"], port, tmp_path / "router.log")
    try:
        two_workers(router)
        wait_for(lambda: router.log().count("room for about") == 2, what="both workers listening")
        for _ in range(5):
            status, text = get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            workers = {s.labels.get("worker") for f in text_string_to_metric_families(text) for s in f.samples}
            assert len(workers) == 1 and workers <= {"1", "2"}, workers
    finally:
        router.stop()


def test_recent_output_keeps_the_latest_bytes() -> None:
    """A terminal's recent output keeps its last bytes only, fed one byte at a time or in chunks."""
    from wsrouter.targets.terminal import RecentOutput

    recent = RecentOutput(10)
    for byte in b"0123456789abcdef":
        recent.add(bytes([byte]))
    assert recent.tail() == b"6789abcdef"
    recent.add(b"x" * 25 + b"END")
    assert recent.tail() == b"xxxxxxxEND"
    assert RecentOutput(10).tail() == b""


@pytest_twisted.inlineCallbacks
def test_late_watcher_of_a_pty_session_gets_its_recent_output_first():
    """A watcher joining a pty session first gets the latest terminal output (to draw the screen), then what follows."""
    from tests.test_ops import _session_id

    router = start_router(routes=["/sh[pty=true;auth=off]=exec:sh -c 'echo early-$((20+1)); cat'"], ops=OPS)

    def session() -> bytes:
        with connect(router.url + "/sh") as ws:
            seen = b""
            while b"early-21" not in seen:
                seen += ws.recv(timeout=10)
            with connect(router.url + f"/status/watch/{_session_id(router)}") as watcher:
                got = watcher.recv(timeout=10)
                ws.send("later\r")
                while b"later" not in got:
                    got += watcher.recv(timeout=10)
        return got

    try:
        got = yield in_thread(session)
        assert got.startswith(b"early-21\r\n") and b"later" in got
    finally:
        yield router.stopService()
