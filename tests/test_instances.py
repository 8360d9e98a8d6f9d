"""
One instance per session and start on demand (issue 13), end to end: a real
router process runs tests/programs/pid_server.py (which tells each client its
PID) under the rebind shim; the `websockets` library is the client.  Below
them, the command template and the config keys.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from wsrouter.config import ConfigError, build_config, load_config, to_data
from wsrouter.config.template import TemplateError, render_argv, template_problems

from .listening import reachable_listeners
from .other_user import assert_only_the_directory_refuses
from .support import REPO, RouterProcess, connect, free_port, handshake_status

PYTHON = os.path.realpath(sys.executable)
PID_SERVER = str(REPO / "tests" / "programs" / "pid_server.py")


@pytest.fixture
def sockets_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short temp dir the router makes its private socket directories in (TMPDIR), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="wsr-inst-"))
    path.chmod(0o711)  # like /tmp, others may pass: only each program's own directory keeps them out
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def program_table(command: list[str], **keys: object) -> str:
    lines = ["[programs.inst]", f"command = {json.dumps(command)}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + '\n\n[[routes]]\npath = "/s"\ntarget = "program:inst"\n'


def start(tmp_path: Path, table: str) -> RouterProcess:
    config = tmp_path / "router.toml"
    config.write_text(table)
    port = free_port()
    return RouterProcess(["--config", str(config), "--listen", f"tcp:{port}:interface=127.0.0.1"], port,
                         tmp_path / "router.log")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(check, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def started_pids(router: RouterProcess) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)", router.log())]


def banner(ws) -> list[str]:  # type: ignore[no-untyped-def]
    """The pid server's first line, split: ['pid', PID, words...]."""
    return ws.recv(timeout=15).decode().split()


def group_members(leaders: list[int]) -> list[tuple[int, str]]:
    """The processes (pid, command name) in the process groups led by C{leaders}, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) in leaders:
                found.append((int(entry.name), name))
    return found


def private_dirs(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir() if entry.name.startswith("wsrouter-"))


def assert_other_users_refused(path: Path, expected: int) -> None:
    """Each of the C{expected} instances' sockets under C{path} refuses another uid (as root; else skipped)."""
    sockets = [sock for entry in path.iterdir() if entry.name.startswith("wsrouter-") for sock in entry.iterdir()]
    assert len({sock.parent for sock in sockets}) == expected and all(sock.is_socket() for sock in sockets)
    if os.geteuid() == 0:
        for sock in sockets:
            assert_only_the_directory_refuses(str(sock))


# -- per session, end to end ------------------------------------------------------


def test_each_session_gets_its_own_instance_on_the_same_port(tmp_path, sockets_dir):
    """Concurrent clients each reach a fresh instance (own PID, socket dir) on one port, stopped with its session."""
    port = free_port()
    router = start(tmp_path, program_table(
        [PYTHON, PID_SERVER, str(port), "0", "{session.id}", "{route.path}", "slot-{instance}", "{query.token}"],
        mode="per-session", max_instances=5))
    try:
        with ExitStack() as stack:
            clients = [stack.enter_context(connect(f"{router.url}/s?token=tok{n}")) for n in range(3)]
            lines = [banner(ws) for ws in clients]
            pids = [int(line[1]) for line in lines]
            assert len(set(pids)) == 3 and all(alive(pid) for pid in pids)
            assert sorted(line[5] for line in lines) == ["tok0", "tok1", "tok2"]
            assert all(line[3] == "/s" and line[2] != lines[0][2] for line in lines[1:])
            assert sorted(line[4] for line in lines) == ["slot-1", "slot-2", "slot-3"]
            started = [line for line in router.log().splitlines() if "started inst." in line]
            assert len(started) == 3 and not any("tok1" in line for line in started)  # template only
            clients[1].send(b"echo")
            assert clients[1].recv(timeout=10) == b"echo"
            assert len(private_dirs(sockets_dir)) == 3
            assert router.log().count(f"asked for port {port}; listening on the private socket") == 3
            assert_other_users_refused(sockets_dir, 3)
            clients[2].send(b"still")
            assert clients[2].recv(timeout=10) == b"still"
            clients[0].close()
            wait_until(lambda: not alive(pids[0]), "the first instance is stopped")
            assert alive(pids[1]) and alive(pids[2])
            wait_until(lambda: len(private_dirs(sockets_dir)) == 2, "its socket directory is removed")
        for pid in pids:
            wait_until(lambda pid=pid: not alive(pid), f"instance {pid} is stopped")
        wait_until(lambda: private_dirs(sockets_dir) == [], "every socket directory is removed")
    finally:
        router.stop()


def test_instance_cap_refuses_with_503(tmp_path, sockets_dir):
    """Past max_instances a client gets 503 saying so; once an instance is gone its slot serves the next client."""
    router = start(tmp_path, program_table([PYTHON, PID_SERVER, "7000"], mode="per-session", max_instances=2))
    try:
        with connect(f"{router.url}/s") as first, connect(f"{router.url}/s") as second:
            pid = int(banner(first)[1])
            banner(second)
            status, body = handshake_status(f"{router.url}/s")
            assert status == 503 and b"max_instances" in body
            first.close()
            wait_until(lambda: not alive(pid), "the first instance is stopped")
            # Its slot is free once the router has reaped it and removed its socket directory (the
            # same callback chain), not as soon as the pid is gone.
            wait_until(lambda: len(private_dirs(sockets_dir)) == 1, "the first instance's directory is removed")
            with connect(f"{router.url}/s") as third:
                assert int(banner(third)[1]) not in (pid,)
    finally:
        router.stop()


def test_instance_that_does_not_bind_in_time_gets_503_and_is_stopped(tmp_path, sockets_dir):
    """An instance not bound within ready_timeout: the client gets 503 with the reason; the instance is stopped."""
    router = start(tmp_path, program_table([PYTHON, PID_SERVER, "7000", "60"], mode="per-session",
                                           ready_timeout=1))
    try:
        status, body = handshake_status(f"{router.url}/s")
        assert status == 503 and b"has not bound its port" in body
        pids = started_pids(router)
        assert len(pids) == 1
        wait_until(lambda: not alive(pids[0]), "the late instance is stopped")
        wait_until(lambda: private_dirs(sockets_dir) == [], "its socket directory is removed")
    finally:
        router.stop()


def test_instance_exiting_before_bind_gets_502_at_once(tmp_path, sockets_dir):
    """An instance that exits before binding fails its client at once with 502 saying how it ended."""
    router = start(tmp_path, "[limits]\nhandshake_timeout = 60\n\n" + program_table(
        [PYTHON, "-c", "raise SystemExit(3)"], mode="per-session", ready_timeout=50))
    try:
        status, body = handshake_status(f"{router.url}/s", open_timeout=60)
        assert status == 502 and b"exited with status 3 before it bound its port" in body
        assert "waited" not in router.log()
    finally:
        router.stop()


@pytest.mark.parametrize("query", ["", "?token=-rf", "?token=a%20b", "?token=a&token=b", "?token=" + "x" * 65])
def test_bad_template_value_gets_400_and_starts_nothing(tmp_path, sockets_dir, query):
    """A missing, repeated or ill-formed {query.token} value gets 400 and no instance is started."""
    router = start(tmp_path, program_table([PYTHON, PID_SERVER, "7000", "0", "{query.token}"], mode="per-session"))
    try:
        status, body = handshake_status(f"{router.url}/s{query}")
        assert status == 400 and b"query parameter 'token'" in body
        assert started_pids(router) == []
    finally:
        router.stop()


def test_router_stop_leaves_no_instance_or_socket(tmp_path, sockets_dir):
    """Stopping the router with sessions open stops every instance (by PID) and removes every socket directory."""
    router = start(tmp_path, program_table([PYTHON, PID_SERVER, "7000"], mode="per-session"))
    with ExitStack() as stack:
        clients = [stack.enter_context(connect(f"{router.url}/s")) for _ in range(2)]
        pids = [int(banner(ws)[1]) for ws in clients]
        assert len(private_dirs(sockets_dir)) == 2
        assert router.stop() == 0
    assert not any(alive(pid) for pid in pids)
    assert private_dirs(sockets_dir) == []


# -- on demand, end to end --------------------------------------------------------------


def test_on_demand_starts_with_first_client_and_stops_when_idle(tmp_path, sockets_dir):
    """An on-demand program starts with its first client, stops after idle_stop; the next client starts a new one."""
    router = start(tmp_path, program_table([PYTHON, PID_SERVER, "7000", "0.3"], mode="respawn",
                                           start="on-demand", idle_stop=1))
    try:
        assert started_pids(router) == []
        with connect(f"{router.url}/s") as first, connect(f"{router.url}/s") as second:
            pid = int(banner(first)[1])
            assert int(banner(second)[1]) == pid  # shared
        wait_until(lambda: not alive(pid), "the idle program is stopped")
        assert "no session for 1 s" in router.log()
        wait_until(lambda: private_dirs(sockets_dir) == [], "its socket directory is removed")
        with connect(f"{router.url}/s") as third:
            again = int(banner(third)[1])
        assert again != pid and started_pids(router) == [pid, again]
    finally:
        router.stop()
    assert not alive(again) and private_dirs(sockets_dir) == []


def test_on_demand_program_kept_while_sessions_come_and_go(tmp_path, sockets_dir):
    """A client that comes before idle_stop has passed keeps the same on-demand program running."""
    router = start(tmp_path, program_table([PYTHON, PID_SERVER, "7000"], mode="respawn",
                                           start="on-demand", idle_stop=30))
    try:
        pids = []
        for _ in range(3):
            with connect(f"{router.url}/s") as ws:
                pids.append(int(banner(ws)[1]))
        assert len(set(pids)) == 1 and alive(pids[0])
    finally:
        router.stop()
    assert not alive(pids[0])


# -- the template and the keys -------------------------------------------------------------


def test_render_fills_fields_and_literal_braces():
    """Fields are filled from the session, {{ and }} are literal braces, other text is left as it is."""
    argv = ("prog", "--id={session.id}", "{{x}}", "{route.path}:{instance}", "{query.a}")
    assert render_argv(argv, {"session.id": "S1", "route.path": "/r", "instance": "2"}, {"a": ["v-1"]}) == (
        "prog", "--id=S1", "{x}", "/r:2", "v-1")


@pytest.mark.parametrize("value", [[], ["-x"], ["_x"], ["a b"], ["a/b"], ["a", "b"], ["é"], ["x" * 65]])
def test_render_refuses_bad_query_values(value):
    """A query value must be given once and match the strict pattern; the error never quotes the value."""
    with pytest.raises(TemplateError) as error:
        render_argv(("prog", "{query.a}"), {}, {"a": value})
    assert "'a'" in str(error.value) and all(v not in str(error.value) for v in value if len(v) > 2)


@pytest.mark.parametrize("argv, problem", [
    (("prog", "{peer}"), "unknown field {peer}"),
    (("prog", "{"), "lone brace"),
    (("prog", "{}"), "lone brace"),
    (("{query.p}",), "argument 0"),
])
def test_template_problems(argv, problem):
    """Unknown fields, lone braces and a templated program name are problems."""
    assert any(problem in text for text in template_problems(argv))


def test_program_keys_round_trip_and_check(tmp_path):
    """The instance keys load, survive to_data, and bad values name their key path."""
    good = tmp_path / "good.toml"
    good.write_text(program_table(["prog", "{session.id}"], mode="per-session", max_instances=3, ready_timeout=2.5)
                    + '[programs.od]\nmode = "respawn"\ncommand = ["prog"]\nstart = "on-demand"\nidle_stop = 0\n')
    config = load_config(str(good), {})
    inst, od = config.programs
    assert (inst.max_instances, inst.ready_timeout, od.start, od.idle_stop) == (3, 2.5, "on-demand", None)
    assert build_config(to_data(config)) == config
    bad = tmp_path / "bad.toml"
    bad.write_text(program_table(["prog", "{nope}"], mode="per-session", max_instances=0, start="on-demand",
                                 ready_timeout=-1, idle_stop="x"))
    with pytest.raises(ConfigError) as error:
        load_config(str(bad), {})
    text = str(error.value)
    for key in ("programs.inst.max_instances", "programs.inst.start", "programs.inst.ready_timeout",
                "programs.inst.idle_stop", "programs.inst.command"):
        assert key in text


def test_per_session_needs_one_worker():
    """Per-session and on-demand programs are refused with workers > 1 (instances live in one process)."""
    raw = {"workers": 2, "programs": {"p": {"mode": "per-session", "command": ["prog"]}},
           "routes": [{"path": "/", "target": "program:p"}]}
    with pytest.raises(ConfigError, match="need workers = 1"):
        build_config(raw)


def test_ready_timeout_must_be_within_the_handshake():
    """A leased program's ready_timeout at or past limits.handshake_timeout is refused with its key path."""
    raw = {"limits": {"handshake_timeout": 5}, "programs": {"p": {"mode": "per-session", "command": ["prog"],
                                                                   "ready_timeout": 5}},
           "routes": [{"path": "/", "target": "program:p"}]}
    with pytest.raises(ConfigError, match=r"programs\.p\.ready_timeout: must be less than limits.handshake_timeout"):
        build_config(raw)
    raw["programs"]["p"]["mode"] = "respawn"  # a program started with the router is not waited for that way
    with pytest.raises(ConfigError, match=r"programs\.p\.ready_timeout: applies only with mode = \"per-session\""):
        build_config(raw)


def test_command_line_options():
    """--wrap per-session and the --wrap-* instance options reach the program; without --wrap they are an error."""
    from twisted.python.usage import UsageError

    from wsrouter.cli.tap import Options

    options = Options()
    options.parseOptions(["--wrap", "per-session", "--wrap-max-instances", "3", "--wrap-ready-timeout", "2.5",
                          "8080", "--", "prog", "{query.t}"])
    program = options["config"].programs[0]
    assert (program.mode, program.max_instances, program.ready_timeout, program.argv) == (
        "per-session", 3, 2.5, ("prog", "{query.t}"))
    options = Options()
    options.parseOptions(["--wrap", "respawn", "--wrap-start", "on-demand", "--wrap-idle-stop", "0", "8080",
                          "--", "prog"])
    program = options["config"].programs[0]
    assert (program.start, program.idle_stop) == ("on-demand", None)
    with pytest.raises(UsageError, match="apply to the program after --wrap"):
        Options().parseOptions(["--wrap-start", "on-demand", "8080", "127.0.0.1:22"])
    with pytest.raises(UsageError, match=r"programs\.prog\.max_instances"):
        Options().parseOptions(["--wrap", "per-session", "--wrap-max-instances", "many", "8080", "--", "prog"])


#: Runs pid_server.py with SIGTERM ignored, so only SIGKILL (after the grace) stops it.
DEAF = [PYTHON, "-c", "import signal, sys, runpy; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')", PID_SERVER, "7000"]


def test_instance_ignoring_sigterm_is_killed_after_the_grace(tmp_path, sockets_dir):
    """An instance that ignores SIGTERM is SIGKILLed after the grace period once its session ends."""
    router = start(tmp_path, program_table(DEAF, mode="per-session"))
    try:
        with connect(f"{router.url}/s") as ws:
            pid = int(banner(ws)[1])
        wait_until(lambda: not alive(pid), "the deaf instance is killed", timeout=20)
        assert "inst.1 did not stop within the grace period; sending SIGKILL" in router.log()
        wait_until(lambda: private_dirs(sockets_dir) == [], "its socket directory is removed")
    finally:
        router.stop()


def test_client_during_an_idle_stop_waits_and_starts_a_new_run(tmp_path, sockets_dir):
    """A client arriving while an on-demand program is being stopped for idleness waits, then gets a new run."""
    table = "[limits]\nhandshake_timeout = 25\n\n" + program_table(
        DEAF, mode="respawn", start="on-demand", idle_stop=0.5)
    router = start(tmp_path, table)
    try:
        with connect(f"{router.url}/s") as ws:
            first = int(banner(ws)[1])
        wait_until(lambda: "no session for 0.5 s" in router.log(), "the idle stop begins")
        assert alive(first)  # SIGTERM is ignored: the stop takes the grace period
        with connect(f"{router.url}/s", open_timeout=25) as ws:
            second = int(banner(ws)[1])
        assert second != first and not alive(first)
    finally:
        router.stop()
    assert not alive(second)


def test_x11vnc_on_xvfb_per_session(tmp_path, sockets_dir):
    """
    Two concurrent clients each get their own Xvfb + x11vnc (both asking for port 5900) and its RFB greeting; neither
    x11vnc listens on a TCP port beyond loopback.
    """
    if not shutil.which("Xvfb") or not shutil.which("x11vnc"):
        pytest.skip("Xvfb/x11vnc not installed: tests/setup/system-deps.sh installs them")
    script = ("Xvfb -displayfd 1 -nolisten tcp -screen 0 320x240x16 2>/dev/null | {{ read d; "
              "exec x11vnc -display :$d -rfbport 5900 -rfbportv6 5900 -nopw -quiet -forever -shared; }}")
    router = start(tmp_path, "[limits]\nhandshake_timeout = 25\n\n" + program_table(
        ["sh", "-c", script], mode="per-session", keep_env=True, ports="5900", ready_timeout=20))
    try:
        with connect(f"{router.url}/s", open_timeout=25) as one, connect(f"{router.url}/s", open_timeout=25) as two:
            assert one.recv(timeout=20).startswith(b"RFB 003.") and two.recv(timeout=20).startswith(b"RFB 003.")
            assert len(private_dirs(sockets_dir)) == 2
            assert len(set(started_pids(router))) == 2
            assert router.log().count("asked for port 5900; listening on the private socket") == 2
            assert_other_users_refused(sockets_dir, 2)
            members = group_members(started_pids(router))
            assert sorted(name for _, name in members).count("Xvfb") == 2
            assert sorted(name for _, name in members).count("x11vnc") == 2
            assert [reachable_listeners(pid) for pid, name in members if name == "x11vnc"] == [[], []]
        for pid, name in members:
            wait_until(lambda pid=pid: not alive(pid), f"{name} ({pid}) is stopped", timeout=20)
        wait_until(lambda: private_dirs(sockets_dir) == [], "every socket directory is removed")
    finally:
        router.stop()


def telnet_prompt(ws, timeout: float = 20) -> bytes:  # type: ignore[no-untyped-def]
    """What a telnet server sends until its login prompt, its option requests refused."""
    from .test_real_programs import refuse_options

    seen = b""
    deadline = time.monotonic() + timeout
    while b"login:" not in seen and time.monotonic() < deadline:
        try:
            data = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        seen += data
        if answer := refuse_options(data):
            ws.send(answer)
    return seen


def test_telnetd_per_session(tmp_path, sockets_dir):
    """Two concurrent clients each get a login prompt from their own in.telnetd, both asking for the same port."""
    from .test_real_programs import TELNETD, self_signed_pem

    if not TELNETD.exists():
        pytest.skip("netkit telnetd not available: `make test` fetches it (telnetd-ssl) as root with apt reachable")
    if os.geteuid() != 0:
        pytest.skip("telnetd's login needs root")
    cert = tmp_path / "telnetd.pem"
    self_signed_pem(cert)
    router = start(tmp_path, program_table([str(TELNETD), "-debug", "2323", "-L", "/bin/login", "-z", f"cert={cert}"],
                                           mode="per-session"))
    try:
        with connect(f"{router.url}/s", subprotocols=["binary"]) as one, \
                connect(f"{router.url}/s", subprotocols=["binary"]) as two:
            assert b"login:" in telnet_prompt(one) and b"login:" in telnet_prompt(two)
            pids = started_pids(router)
            assert len(set(pids)) == 2 and len(private_dirs(sockets_dir)) == 2
            assert_other_users_refused(sockets_dir, 2)
        for pid in pids:
            wait_until(lambda pid=pid: not alive(pid), "each telnetd is stopped")
        wait_until(lambda: private_dirs(sockets_dir) == [], "every socket directory is removed")
    finally:
        router.stop()


def test_client_leaving_in_the_handshake_stops_its_instance(tmp_path, sockets_dir):
    """A client that hangs up while its instance is still starting leaves no instance behind."""
    import socket

    router = start(tmp_path, program_table([PYTHON, PID_SERVER, "7000", "1.5"], mode="per-session"))
    try:
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as raw:
            raw.sendall(b"GET /s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            wait_until(lambda: started_pids(router) != [], "the instance starts")
        pid = started_pids(router)[0]
        wait_until(lambda: "asked for port 7000" in router.log(), "the instance binds")
        wait_until(lambda: not alive(pid), "the abandoned instance is stopped")
        wait_until(lambda: private_dirs(sockets_dir) == [], "its socket directory is removed")
    finally:
        router.stop()


def test_instance_flooding_a_slow_client_bounds_memory(tmp_path, sockets_dir):
    """An instance sending 128 MiB to a client that stops reading for a while grows the router by < 64 MiB."""
    from . import rawws

    total_mib = 128
    router = start(tmp_path, program_table([PYTHON, str(REPO / "tests" / "programs" / "flood_server.py"), "7000",
                                            str(total_mib)], mode="per-session"))
    try:
        baseline = router.status("VmRSS")
        sock = rawws.upgrade(router.port, "/s")
        reader = rawws.read_late_and_slowly(sock)
        sock.close()
        growth = router.status("VmHWM") - baseline
        assert reader.received == total_mib * 1024 * 1024
        assert growth < 64 * 1024, f"router grew by {growth} KiB"
    finally:
        router.stop()
