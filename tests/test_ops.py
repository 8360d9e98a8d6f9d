"""
The operator's pages over real loopback sockets: /metrics, /healthz, the
status page's live feed, who may see them, and watching a session.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed

from tests import rawws
from tests.support import RecordingTarget, connect, handshake_status, in_thread, listen_target, start_router
from wsrouter.auth import hash_password
from wsrouter.config import ConfigError, build_config
from wsrouter.ops.logformat import event_as_json
from wsrouter.ops.metrics import reason_label

OPS = {"metrics": "/metrics", "status": "/status", "healthz": "/healthz"}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


# -- configuration --------------------------------------------------------------------


def test_ops_off_by_default() -> None:
    """Without [ops] no page is served: metrics, status and health check are all off."""
    ops = build_config({"routes": [{"path": "/", "target": "echo:"}]}).ops
    assert (ops.metrics, ops.status, ops.healthz, ops.auth) == (None, None, None, None)


@pytest.mark.parametrize(("ops", "problem"), [
    ({"metrics": "metrics"}, "ops.metrics: must be a path like /metrics"),
    ({"status": "/status/"}, "ops.status: must be a path like /metrics"),
    ({"metrics": "/m", "healthz": "/m"}, "ops: metrics, status and healthz need different paths"),
    ({"metrics": "/m", "auth": "nobody"}, "ops.auth: no [auth.nobody] table"),
    ({"watch_queue": 0}, "ops.watch_queue: must be a whole number greater than 0"),
    ({"metric": "/m"}, "ops.metric: unknown key"),
])
def test_ops_config_problems(ops: dict[str, Any], problem: str) -> None:
    """A bad [ops] table is refused naming the key path and the problem."""
    with pytest.raises(ConfigError) as caught:
        build_config({"routes": [{"path": "/", "target": "echo:"}], "ops": ops})
    lines = str(caught.value).splitlines()
    assert any(line.startswith("configuration: " + problem) for line in lines), lines


def test_route_watch_mode_checked() -> None:
    """A route's watch is off, read or write; anything else is refused."""
    with pytest.raises(ConfigError, match=r"routes\[0\]\.watch: must be off or read or write, not 'yes'"):
        build_config({"routes": [{"path": "/", "target": "echo:", "watch": "yes"}]})
    assert build_config({"routes": ["/t[watch=write]=echo:"]}).routes[0].watch == "write"


def test_command_line_options_lower_into_ops() -> None:
    """--metrics, --status, --healthz, --ops-auth and --log-format fill [ops] and log.format."""
    from wsrouter.cli.tap import ServeOptions

    options = ServeOptions()
    options.parseOptions(["--route", "/=echo:", "--metrics", "/m", "--status", "/s", "--healthz", "/h",
                          "--log-format", "json", "--auth-plugin", "BasicHTTPAuth", "--auth-source", "a:b",
                          "--ops-auth", "websockify"])
    config = options["config"]
    assert (config.ops.metrics, config.ops.status, config.ops.healthz, config.ops.auth) == ("/m", "/s", "/h",
                                                                                           "websockify")
    assert config.log.format == "json"


@pytest.mark.parametrize(("reason", "label"), [
    ("no route for path /x", "no route for path"),
    ("origin https://evil.example not allowed: not this site", "origin not allowed"),
    ("cannot connect to 127.0.0.1:5901: Connection refused", "cannot connect to"),
    ("too many open connections", "too many open connections"),
    ("the route asks for credentials: none given", "the route asks for credentials"),
    ("", "other"),
])
def test_refusal_reason_labels_are_bounded(reason: str, label: str) -> None:
    """Refusal reasons become short labels without client-chosen details (paths, addresses, origins)."""
    assert reason_label(reason) == label


def test_json_log_line_has_the_events_fields() -> None:
    """A session-close event is one JSON object with its fields, its event name and the text line."""
    event = {"log_format": "session {id} closed: {up} bytes", "log_namespace": "wsrouter", "log_time": 0.0,
             "id": "ab12", "up": 5, "by": "client", "log_level": None}
    line = json.loads(event_as_json(event))
    assert line["event"] == "session_close"
    assert (line["id"], line["up"], line["by"]) == ("ab12", 5, "client")
    assert line["message"] == "session ab12 closed: 5 bytes"
    assert line["time"].startswith("1970-01-01T00:00:00")


# -- metrics and health --------------------------------------------------------------


def _echo_once(url: str) -> None:
    with connect(url) as ws:
        ws.send(b"12345")
        assert ws.recv(timeout=10) == b"12345"


@pytest_twisted.inlineCallbacks
def test_metrics_move_with_sessions_refusals_and_target_failures():
    """Sessions, bytes each way, refusals (by status and reason) and target failures are counted by route."""
    router = start_router(routes=["/e=echo:", "/dead=tcp://127.0.0.1:9"], ops=OPS)
    try:
        yield in_thread(_echo_once, router.url + "/e")
        status, _ = yield in_thread(handshake_status, router.url + "/nowhere")
        assert status == 404
        status, _ = yield in_thread(handshake_status, router.url + "/dead")
        assert status == 502
        status, text = yield in_thread(get, router.http + "/metrics")
        assert status == 200
        assert sample(text, "wsrouter_sessions_total", route="/e") == 1
        assert sample(text, "wsrouter_bytes_from_client_total", route="/e") == 5
        assert sample(text, "wsrouter_bytes_to_client_total", route="/e") == 5
        assert sample(text, "wsrouter_handshake_refusals_total", status="404", reason="no route for path") == 1
        assert sample(text, "wsrouter_target_connect_failures_total", route="/dead") == 1
        assert sample(text, "wsrouter_sessions_open", route="/e") is None
        assert (sample(text, "wsrouter_descriptor_room") or 0) > 0
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_two_routers_keep_their_own_counters():
    """Each router has its own registry: one router's sessions never show in another's metrics."""
    first = start_router(routes=["/e=echo:"], ops=OPS)
    second = start_router(routes=["/e=echo:"], ops=OPS)
    try:
        yield in_thread(_echo_once, first.url + "/e")
        _, one = yield in_thread(get, first.http + "/metrics")
        _, two = yield in_thread(get, second.http + "/metrics")
        assert sample(one, "wsrouter_sessions_total", route="/e") == 1
        assert sample(two, "wsrouter_sessions_total", route="/e") is None
    finally:
        yield first.stopService()
        yield second.stopService()


@pytest_twisted.inlineCallbacks
def test_open_session_counts_live_bytes():
    """An open session shows in sessions_open and its bytes count before it closes."""
    router = start_router(routes=["/e=echo:"], ops=OPS)

    def during() -> str:
        with connect(router.url + "/e") as ws:
            ws.send(b"abc")
            ws.recv(timeout=10)
            return get(router.http + "/metrics")[1]

    try:
        text = yield in_thread(during)
        assert sample(text, "wsrouter_sessions_open", route="/e") == 1
        assert sample(text, "wsrouter_bytes_to_client_total", route="/e") == 3
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_healthz_ok_then_503_while_shutting_down():
    """The health check says 200 ok while serving and 503 with the reason once the router shuts down."""
    router = start_router(routes=["/e=echo:"], ops=OPS)
    try:
        answer = yield in_thread(get, router.http + "/healthz")
        assert answer == (200, "ok\n")
        yield router.gateway.shutdown()
        answer = yield in_thread(get, router.http + "/healthz")
        assert answer == (503, "unhealthy: shutting down\n")
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_pages_off_are_not_served():
    """With [ops] off, /metrics is not the router's: a plain 404."""
    router = start_router(routes=["/e=echo:"])
    try:
        status, _ = yield in_thread(get, router.http + "/metrics")
        assert status == 404
    finally:
        yield router.stopService()


# -- who may see them ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_metrics_and_status_refuse_non_loopback_clients():
    """A client that is not on loopback (here: named by a trusted proxy) gets 403; the health check answers it."""
    router = start_router(routes=["/e=echo:"], ops=OPS, trusted_proxies=["127.0.0.1"])
    remote = {"X-Forwarded-For": "203.0.113.7"}
    try:
        for path in ("/metrics", "/status", "/status/status.js"):
            status, body = yield in_thread(get, router.http + path, remote)
            assert status == 403, path
            assert "loopback" in body
        status, _ = yield in_thread(get, router.http + "/healthz", remote)
        assert status == 200
        status, _ = yield in_thread(handshake_status, router.url + "/status/live", additional_headers=remote)
        assert status == 403
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_ops_auth_asks_everyone_for_credentials():
    """With ops.auth the pages need its credentials (401 with a challenge without), then answer."""
    users = [f"op:{hash_password('s3cret')}"]
    router = start_router(routes=["/e=echo:"], ops={**OPS, "auth": "ops"}, auth={"ops": {"users": users}})
    good = {"Authorization": "Basic " + base64.b64encode(b"op:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"op:wrong").decode()}
    try:
        status, _ = yield in_thread(get, router.http + "/metrics")
        assert status == 401
        status, _ = yield in_thread(get, router.http + "/metrics", bad)
        assert status == 401
        status, text = yield in_thread(get, router.http + "/metrics", good)
        assert status == 200 and "wsrouter_sessions_open" in text
        status, _ = yield in_thread(handshake_status, router.url + "/status/live")
        assert status == 401
        status, _ = yield in_thread(handshake_status, router.url + "/status/live", additional_headers=good)
        assert status == 101
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_status_feed_refuses_other_origins():
    """A page of another site cannot open the live feed (403), so a local browser is no way in."""
    router = start_router(routes=["/e=echo:"], ops=OPS)
    try:
        status, _ = yield in_thread(handshake_status, router.url + "/status/live", origin="https://evil.example")
        assert status == 403
    finally:
        yield router.stopService()


# -- the live status feed -------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_live_status_lists_a_session_and_drops_it_when_it_closes():
    """The live feed lists an open session (peer, route, target, bytes) and a later snapshot no longer does."""
    router = start_router(routes=["/e=echo:"], ops=OPS)

    def watch() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with connect(router.url + "/status/live") as live:
            assert json.loads(live.recv(timeout=10))["sessions"] == []
            with connect(router.url + "/e") as ws:
                ws.send(b"hey")
                ws.recv(timeout=10)
                listed = _until(live, lambda s: s["sessions"] and s["sessions"][0]["bytes_to_client"] == 3)
            gone = _until(live, lambda s: not s["sessions"])
            return listed, gone["sessions"]

    try:
        listed, after = yield in_thread(watch)
        session = listed["sessions"][0]
        assert (session["route"], session["target"], session["path"]) == ("/e", "echo:", "/e")
        assert session["peer"].startswith("127.0.0.1:")
        assert session["bytes_from_client"] == 3
        assert listed["routes"] == [{"route": "/e", "target": "echo:", "watch": "read", "targets": None}]
        assert after == []
    finally:
        yield router.stopService()


def _until(live: Any, wanted: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        snapshot: dict[str, Any] = json.loads(live.recv(timeout=max(deadline - time.monotonic(), 0.1)))
        if wanted(snapshot):
            return snapshot


# -- watching ---------------------------------------------------------------------------


def _session_id(router: Any) -> str:
    (session_id,) = list(router.gateway.sessions)
    return str(session_id)


@pytest_twisted.inlineCallbacks
def test_watcher_sees_what_the_target_sends_not_what_the_client_types():
    """A watcher gets the target's output as the client does, but never the client's own input."""
    port, factory = listen_target(RecordingTarget)
    target = f"tcp://127.0.0.1:{port.getHost().port}"
    router = start_router(routes=[f"/t={target}"], ops=OPS)

    def session() -> tuple[bytes, bytes]:
        with connect(router.url + "/t") as ws, connect(router.url + f"/status/watch/{_session_id(router)}") as w:
            _wait_for_watchers(router, 1)
            ws.send(b"password")
            _wait(lambda: factory.connections and bytes(factory.connections[0].received) == b"password")
            reactor_call(factory.connections[0].transport.write, b"login ok")
            return ws.recv(timeout=10), w.recv(timeout=10)

    try:
        client_got, watcher_got = yield in_thread(session)
        assert client_got == watcher_got == b"login ok"
    finally:
        yield router.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_read_only_watcher_cannot_type():
    """On a read-only route a watcher's message never reaches the target, and the watcher is closed with 4003."""
    router = start_router(routes=["/e=echo:"], ops=OPS)

    def session() -> int | None:
        with connect(router.url + "/e") as ws, connect(router.url + f"/status/watch/{_session_id(router)}") as w:
            _wait_for_watchers(router, 1)
            w.send(b"typed by watcher")
            with pytest.raises(ConnectionClosed) as closed:
                w.recv(timeout=10)
            ws.send(b"client")
            assert ws.recv(timeout=10) == b"client"  # the echo got nothing else before it
            return closed.value.rcvd.code if closed.value.rcvd else None

    try:
        code = yield in_thread(session)
        assert code == 4003
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_writable_watcher_types_into_the_session():
    """On a route with watch = write a watcher's message reaches the target; the client sees the answer."""
    router = start_router(routes=["/e[watch=write]=echo:"], ops=OPS)

    def session() -> tuple[bytes, bytes]:
        with connect(router.url + "/e") as ws, connect(router.url + f"/status/watch/{_session_id(router)}") as w:
            _wait_for_watchers(router, 1)
            w.send(b"from the watcher")
            return ws.recv(timeout=10), w.recv(timeout=10)

    try:
        client_got, watcher_got = yield in_thread(session)
        assert client_got == watcher_got == b"from the watcher"
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_watch_refusals():
    """An unknown session is 404, a route with watch = off is 403, and another site's page is 403."""
    router = start_router(routes=["/e=echo:", "/hidden[watch=off]=echo:"], ops=OPS)

    def statuses() -> list[int]:
        found = [handshake_status(router.url + "/status/watch/nosuch")[0]]
        with connect(router.url + "/hidden"):
            found.append(handshake_status(router.url + f"/status/watch/{_session_id(router)}")[0])
        with connect(router.url + "/e"):
            found.append(handshake_status(router.url + f"/status/watch/{_session_id(router)}",
                                          origin="https://evil.example")[0])
        return found

    try:
        assert (yield in_thread(statuses)) == [404, 403, 403]
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_slow_watcher_is_dropped_and_never_slows_the_session():
    """A watcher that reads nothing is closed with 4008 once it falls behind; the session goes on at full speed."""
    router = start_router(routes=["/e=echo:"], ops={**OPS, "watch_queue": 256 * 1024})
    chunk = b"x" * 65536
    rounds = 100  # 6.25 MiB through the session: far more than the watcher's queue and socket buffers

    def session() -> tuple[int, int | None]:
        with connect(router.url + "/e") as ws:
            sock = rawws.upgrade(router.port_number, f"/status/watch/{_session_id(router)}")
            _wait_for_watchers(router, 1)
            echoed = 0
            for _ in range(rounds):
                ws.send(chunk)
                echoed += len(ws.recv(timeout=10))
            _wait_for_watchers(router, 0)
            reader = rawws.FrameReader(sock)
            reader.read_to_close()
            sock.close()
            return echoed, reader.close_code

    try:
        echoed, code = yield in_thread(session)
        assert echoed == rounds * len(chunk)
        assert code == 4008
        _, text = yield in_thread(get, router.http + "/metrics")
        assert sample(text, "wsrouter_watchers_dropped_total") == 1
    finally:
        yield router.stopService()


@pytest_twisted.inlineCallbacks
def test_watchers_are_closed_when_the_session_ends():
    """When the watched session ends, its watcher is closed normally (1000)."""
    router = start_router(routes=["/e=echo:"], ops=OPS)

    def session() -> int | None:
        with connect(router.url + "/e") as ws, connect(router.url + f"/status/watch/{_session_id(router)}") as w:
            _wait_for_watchers(router, 1)
            ws.close()
            with pytest.raises(ConnectionClosed) as closed:
                w.recv(timeout=10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    try:
        assert (yield in_thread(session)) == 1000
    finally:
        yield router.stopService()


# -- helpers ----------------------------------------------------------------------------


def reactor_call(function: Any, *args: Any) -> None:
    from twisted.internet import reactor

    reactor.callFromThread(function, *args)


def _wait(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


def _wait_for_watchers(router: Any, count: int) -> None:
    def attached() -> bool:
        return sum(len(s.watchers.watching) for s in router.gateway.sessions.values()
                   if s.watchers is not None) == count

    _wait(attached)


# -- documentation and the bridge's two hooks ---------------------------------------------


def test_ops_keys_documented_and_used_in_the_example() -> None:
    """Every [ops] key is in docs/config.md and set in examples/wsrouter.toml; a route there sets watch."""
    from tests.support import REPO
    from wsrouter.config import read_file, spec

    text = (REPO / "docs" / "config.md").read_text()
    raw = read_file(str(REPO / "examples" / "wsrouter.toml"))
    assert set(raw["ops"]) == set(spec.OPS_KEYS)
    assert all(f"`{key}`" in text for key in spec.OPS_KEYS)
    assert any("watch" in route for route in raw["routes"])


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    def client_message(self, payload: bytes, is_binary: bool) -> None:
        self.seen.append(("client", payload))

    def target_message(self, payload: bytes, is_binary: bool) -> None:
        self.seen.append(("target", payload))

    def closed(self, code: int | None, reason: str) -> None:
        self.seen.append(("closed", b""))


class _Link:
    producer = None
    consumer = None
    message_oriented = False

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def start(self, receiver: Any) -> None:
        self.receiver = receiver

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Socket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, payload: bytes, is_binary: bool) -> None:
        self.sent.append(payload)

    def close(self, code: int, reason: str) -> None:
        pass

    def attach_producer(self, producer: Any) -> None:
        pass

    def consumer_producer(self) -> Any:
        return None


def test_bridge_tap_and_inject() -> None:
    """A tap sees the traffic from then on and hands back the recorder it replaced; inject writes to the target."""
    from wsrouter.bridge import Bridge
    from wsrouter.framing import make_framer

    recording, tap = _Recorder(), _Recorder()
    link, socket = _Link(), _Socket()
    bridge = Bridge(socket, link, make_framer(None, "binary", 0), recorder=recording)
    bridge.start()
    link.receiver.data_received(b"before")
    assert bridge.tap(tap) is recording
    link.receiver.data_received(b"after")
    assert bridge.inject(b"typed", True) is True
    assert (recording.seen, tap.seen) == ([("target", b"before")], [("target", b"after")])
    assert link.written == [b"typed"] and socket.sent == [b"before", b"after"]
    bridge.websocket_closed(1000, "")
    assert bridge.inject(b"late", True) is False
    assert link.written == [b"typed"]


@pytest_twisted.inlineCallbacks
def test_writable_watcher_is_paused_by_a_slow_target():
    """A writable watcher typing into a target that does not read is paused: the router's queue stays bounded."""
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    from wsrouter.ws.internals import queued_bytes

    port, factory = listen_target(RecordingTarget)
    router = start_router(routes=[f"/t[watch=write]=tcp://127.0.0.1:{port.getHost().port}"],
                          ops={**OPS, "watch_queue": 256 * 1024})
    chunk, count = b"w" * 65536, 600  # 39 MiB: more than any socket buffers between watcher and target

    def flood() -> tuple[int, int, int]:
        import threading

        with connect(router.url + "/t") as ws, connect(router.url + f"/status/watch/{_session_id(router)}") as w:
            _wait_for_watchers(router, 1)
            _wait(lambda: factory.connections)
            target = factory.connections[0]
            blockingCallFromThread(reactor, target.transport.pauseProducing)
            sent = [0]

            def send_all() -> None:
                for _ in range(count):
                    w.send(chunk)
                    sent[0] += 1

            sender = threading.Thread(target=send_all, daemon=True)
            sender.start()
            time.sleep(2)
            session = router.gateway.sessions[_session_id(router)]
            queued = blockingCallFromThread(reactor, lambda: queued_bytes(session.link.transport))
            sent_while_paused = sent[0]
            blockingCallFromThread(reactor, target.transport.resumeProducing)
            sender.join(60)
            _wait(lambda: len(target.received) == count * len(chunk), 60)
            ws.close()
            return queued, sent_while_paused, len(target.received)

    try:
        queued, sent_while_paused, received = yield in_thread(flood)
        assert queued < 1024 * 1024
        assert sent_while_paused < count
        assert received == count * len(chunk)
    finally:
        yield router.stopService()
        yield port.stopListening()


class _Program:
    """A wrapped program as the status page and the health check read it."""

    def __init__(self, running: bool, mode: str = "respawn"):
        self.name, self.pid, self.running, self.restarts = "vnc", 4242 if running else None, running, 3
        self.target = type("Target", (), {"mode": mode})()


@pytest.mark.parametrize(("programs", "answer"), [
    ([], (200, "ok\n")),
    ([_Program(True)], (200, "ok\n")),
    ([_Program(False, mode="ignore")], (200, "ok\n")),
    ([_Program(False)], (503, "unhealthy: wrapped program vnc is not running\n")),
])
def test_health_follows_respawned_programs(programs: list[_Program], answer: tuple[int, str]) -> None:
    """The health check is 503 while a respawn-mode program is down, and only then."""
    from twisted.internet.task import Clock

    from wsrouter.gateway import Gateway
    from wsrouter.ops.pages import OpsPages

    clock = Clock()
    pages = OpsPages(Gateway(build_config({"routes": ["/e=echo:"], "ops": OPS}), clock), clock)
    pages.programs = lambda: programs
    assert pages.health() == answer
    pages.stop()


def test_status_snapshot_lists_programs() -> None:
    """The status snapshot gives each wrapped program's name, pid, state, restarts and mode."""
    from twisted.internet.task import Clock

    from wsrouter.gateway import Gateway
    from wsrouter.ops.status import snapshot

    gateway = Gateway(build_config({"routes": ["/e=echo:"]}), Clock())
    data = snapshot(gateway, [_Program(True)], 0.0)
    assert data["programs"] == [{"name": "vnc", "pid": 4242, "running": True, "restarts": 3, "mode": "respawn"}]
    assert (data["sessions"], data["more_sessions"], data["stopping"]) == ([], 0, False)
