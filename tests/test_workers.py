"""
`--workers N`: the supervisor's pure parts, a worker's view of wrapped
programs on a fake clock, and real supervisors with real worker processes:
sharing the load, one wrapped program, restarts, and shutdown leaving no
process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from websockets.exceptions import ConnectionClosed

from wsrouter.config import ConfigError, build_config, route_from_string
from wsrouter.interfaces import TargetError
from wsrouter.process.supervisor import MAX_RESTART_DELAY, MIN_RESTART_DELAY, STABLE_AFTER, restart_delay
from wsrouter.process.wrapped import wrapped_targets
from wsrouter.service.worker_process import ProgramAddress
from wsrouter.service.workers import (
    FIRST_LISTENER_FD,
    address_message,
    decode_config,
    encode_config,
    parse_log_line,
    reload_message,
    setup_message,
)

from .support import PYTHON, REPO, RouterProcess, child_env, connect, free_port, handshake_status, wait_for_port

REAL_PYTHON = os.path.realpath(PYTHON)
TCP_SERVER = str(REPO / "tests" / "programs" / "tcp_server.py")

# -- pure parts ----------------------------------------------------------------------


def test_workers_default_to_one_and_need_shareable_listeners():
    """workers defaults to 1; more than one refuses listeners that cannot be shared, naming them."""
    assert build_config({"routes": [route_from_string("/=echo:")]}).workers == 1
    assert build_config({"routes": [route_from_string("/=echo:")], "workers": "4",
                         "listen": ["tcp:0", "unix:/tmp/x.sock"]}).workers == 4
    with pytest.raises(ConfigError) as error:
        build_config({"routes": [route_from_string("/=echo:")], "workers": 2, "listen": ["tcp:0", "ssl:443"]})
    assert error.value.problems == [("listen[1]", "workers cannot share 'ssl:443'; with workers > 1 use "
                                                  "tcp:..., tcp6:..., unix:... listeners")]
    with pytest.raises(ConfigError):
        build_config({"routes": [route_from_string("/=echo:")], "workers": 0})


def test_setup_message_carries_config_listeners_and_addresses():
    """The set-up line round-trips the whole config and names the descriptors and addresses."""
    config = build_config({"routes": [route_from_string("/a=wrap:respawn:server --port 1"),
                                      route_from_string("/b=tcp://127.0.0.1:9")], "workers": 2})
    line = setup_message(2, config, 2, [(("127.0.0.1", 4000), None)])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    message = json.loads(line)
    assert message["worker"] == 2
    assert message["listeners"] == [FIRST_LISTENER_FD, FIRST_LISTENER_FD + 1]
    assert message["programs"] == [{"address": ["127.0.0.1", 4000], "gone": None}]
    assert decode_config(message["config"]) == config
    assert json.loads(address_message(0, (None, "gone for good"))) == {
        "program": 0, "address": None, "gone": "gone for good"}


def test_config_crosses_to_workers_as_text_and_reloads_as_one_json_line():
    """encode_config gives text that decode_config turns back into an equal config; a reload is one JSON line."""
    config = build_config({"routes": [route_from_string("/a=echo:"), route_from_string("/b=tcp://127.0.0.1:9")],
                           "workers": 2})
    text = encode_config(config)
    assert isinstance(text, str) and "\n" not in text
    assert decode_config(text) == config
    line = reload_message(config, [])
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert decode_config(json.loads(line)["reload"]) == config
    assert json.loads(text)["routes"][0]["path"] == "/a", "plain data in the nested schema"
    with pytest.raises(ConfigError) as error:
        decode_config(json.dumps({"routes": [{"path": "/a", "target": "echo:"}], "wrokers": 2}))
    assert "wrokers" in str(error.value) and "control socket" in str(error.value)
    with pytest.raises(ConfigError):
        decode_config("not json")


def test_wrapped_targets_are_numbered_once_in_route_order():
    """A program behind two routes is one program; numbering follows the routes."""
    routes = ["/a=wrap:respawn:one", "/b=wrap:ignore:two", "/c=wrap:respawn:one"]
    config = build_config({"routes": [route_from_string(route) for route in routes]})
    assert [target.argv for target in wrapped_targets(config)] == [("one",), ("two",)]


@pytest.mark.parametrize("line, level, text", [
    ("info session w1.ab open", LogLevel.info, "session w1.ab open"),
    ("warn something", LogLevel.warn, "something"),
    ("critical boom", LogLevel.critical, "boom"),
    ("Traceback (most recent call last):", None, "Traceback (most recent call last):"),
    ("info", None, "info"),
])
def test_worker_log_lines(line, level, text):
    """A worker's `LEVEL TEXT` lines keep their level; anything else is passed on as it is."""
    assert parse_log_line(line) == (level, text)


def test_restart_delay_doubles_for_workers_dying_young():
    """Young deaths double the delay up to the maximum; a stable run restarts at once and resets it."""
    assert restart_delay(0.5, MIN_RESTART_DELAY) == (MIN_RESTART_DELAY, 2 * MIN_RESTART_DELAY)
    assert restart_delay(0.5, MAX_RESTART_DELAY) == (MAX_RESTART_DELAY, MAX_RESTART_DELAY)
    assert restart_delay(STABLE_AFTER, 16.0) == (0.0, MIN_RESTART_DELAY)


def test_program_address_waits_for_the_supervisor_then_503s():
    """A worker's view of a wrapped program: known addresses at once, waits for a report, 503 after the timeout."""
    clock = Clock()
    program = ProgramAddress(clock, "server")
    waiting = program.when_ready(5)
    program.moved(("127.0.0.1", 4000))
    assert waiting.result == ("127.0.0.1", 4000)
    assert program.when_ready(5).result == ("127.0.0.1", 4000)
    program.moved(None)
    failing = program.when_ready(2)
    failures = []
    failing.addErrback(failures.append)
    clock.advance(2)
    assert failures and isinstance(failures[0].value, TargetError) and failures[0].value.status == 503
    assert "server is not listening" in failures[0].value.reason


def test_program_address_gone_fails_at_once_with_502():
    """When the supervisor says a program is gone for good, waiting and new clients get 502 with its reason at once."""
    clock = Clock()
    program = ProgramAddress(clock, "telnetd")
    waiting = program.when_ready(9)
    failures: list = []
    waiting.addErrback(failures.append)
    program.moved(None, "wrapped program telnetd exited with status 0 and is not restarted (mode ignore)")
    assert failures and failures[0].value.status == 502
    assert "is not restarted (mode ignore)" in failures[0].value.reason
    later: list = []
    program.when_ready(9).addErrback(later.append)
    assert later and later[0].value.status == 502
    assert program.gone_reason() is not None
    program.moved(("127.0.0.1", 4000))
    assert program.gone_reason() is None and program.when_ready(9).result == ("127.0.0.1", 4000)


# -- real supervisors ---------------------------------------------------------------------


def worker_pids(log: str) -> dict[int, list[int]]:
    """Worker number -> PIDs it was started with, in order."""
    pids: dict[int, list[int]] = {}
    for index, pid in re.findall(r"started worker (\d+) \(pid (\d+)\)", log):
        pids.setdefault(int(index), []).append(int(pid))
    return pids


def two_workers(router):
    """Wait (bounded) until the log shows both workers started; their pids."""
    return wait_for(lambda: worker_pids(router.log()) if len(worker_pids(router.log())) == 2 else None,
                    what="two workers")


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def assert_all_gone(pids: list[int], timeout: float = 15.0) -> None:
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout, f"processes {pids} to end")


def echo_sessions(url: str, count: int) -> None:
    """Open C{count} sessions at once, check each echoes, close them."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def session(n: int) -> None:
        try:
            with connect(url) as ws:
                barrier.wait(20)
                ws.send(b"hello %d" % n)
                assert ws.recv(timeout=10) == b"hello %d" % n
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=session, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]


def test_two_workers_share_the_load_and_stop_on_sigterm(tmp_path):
    """With --workers 2 both workers serve (ids w1., w2.); SIGTERM closes sessions with 1001, leaving no process."""
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2",
                            "--route", "/*=echo:"], port, tmp_path / "router.log")
    try:
        pids = two_workers(router)
        wait_for(lambda: router.log().count("room for about") == 2, what="both workers listening")
        # The kernel picks the worker for each connection; a batch of 40 all going to one worker is
        # unlikely but possible, so up to five batches are sent until both have served.
        for batch in range(1, 6):
            echo_sessions(f"ws://127.0.0.1:{port}/x", 40)
            log = router.log()
            served = {n: len(re.findall(rf"\[worker {n}\] session w{n}\.[0-9a-f]{{8}} open", log)) for n in (1, 2)}
            assert served[1] + served[2] == 40 * batch, served
            if served[1] and served[2]:
                break
        assert served[1] > 0 and served[2] > 0, served
        assert "for each worker" in log and "open-file limit" in log
        with connect(f"ws://127.0.0.1:{port}/held") as held:
            held.send(b"x")
            assert held.recv(timeout=10) == b"x"
            status = router.stop()
            with pytest.raises(ConnectionClosed) as closed:
                held.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert status == 0
        assert_all_gone([router.pid] + [pid for each in pids.values() for pid in each])
        log = router.log()
        assert "worker 1 (pid" in log and "stopped (exited with status 0)" in log
        assert "restarting" not in log and "Traceback" not in log
    finally:
        router.stop()


def test_a_killed_worker_is_restarted(tmp_path):
    """A worker killed with SIGKILL is restarted, and the router goes on serving."""
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2",
                            "--route", "/*=echo:"], port, tmp_path / "router.log")
    try:
        first = two_workers(router)
        wait_for(lambda: router.log().count("room for about") == 2, what="both workers listening")
        victim = first[1][0]
        os.kill(victim, signal.SIGKILL)
        restarted = wait_for(lambda: len(worker_pids(router.log()).get(1, [])) == 2 and worker_pids(router.log()),
                             what="worker 1 restarted")
        assert f"worker 1 (pid {victim}) killed by signal 9" in router.log()
        assert "restarting in 1 s" in router.log()
        new = restarted[1][1]
        assert new != victim and alive(new) and not alive(victim)
        wait_for(lambda: router.log().count("room for about") == 3, what="the new worker listening")
        echo_sessions(f"ws://127.0.0.1:{port}/again", 20)
        assert router.process.poll() is None
    finally:
        router.stop()
    assert_all_gone([pid for each in worker_pids(router.log()).values() for pid in each])


def test_wrapped_program_runs_once_and_workers_follow_its_port(tmp_path):
    """With workers, a wrapped program is started once, by the supervisor, and every worker relays to it."""
    port = free_port()
    program = [REAL_PYTHON, TCP_SERVER, "--host", "127.0.0.1", "--port", str(port), "--banner", "hi", "--echo"]
    router = RouterProcess(["--workers", "2", "--wrap", "respawn", "--", *program], port, tmp_path / "router.log")
    try:
        wait_for(lambda: len(worker_pids(router.log())) == 2, what="two workers")
        wait_for(lambda: router.log().count("room for about") == 2, what="both workers listening")
        for n in range(8):  # the test server serves one connection at a time
            with connect(f"ws://127.0.0.1:{port}/s{n}") as ws:
                assert ws.recv(timeout=10) == b"hi\n"
                ws.send(b"echo %d" % n)
                assert ws.recv(timeout=10) == b"echo %d" % n
        log = router.log()
        started = re.findall(r"started \S+ \(pid (\d+), respawn mode\)", log)
        assert len(started) == 1, log
        assert f"asked for port {port}; listening on" in log
        assert f"listening on tcp:{port}:interface=127.0.0.1, the port" in log
        program_pid = int(started[0])
        pids = [pid for each in worker_pids(log).values() for pid in each]
    finally:
        router.stop()
    assert_all_gone([router.pid, program_pid, *pids])


def test_workers_leave_when_the_supervisor_is_killed(tmp_path):
    """Workers whose supervisor dies (even by SIGKILL) stop by themselves: no orphans."""
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2",
                            "--route", "/*=echo:"], port, tmp_path / "router.log")
    try:
        pids = two_workers(router)
        router.stop(signal.SIGKILL)
        assert_all_gone([pid for each in pids.values() for pid in each])
    finally:
        router.stop()


def test_one_worker_is_one_process(tmp_path):
    """--workers 1 (the default) keeps the router in one process, with no supervisor."""
    port = free_port()
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "1",
                            "--route", "/*=echo:"], port, tmp_path / "router.log")
    try:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            ws.send(b"one")
            assert ws.recv(timeout=10) == b"one"
        children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == router.pid]
        assert children == []
        assert "worker" not in router.log()
    finally:
        router.stop()


def _parent(proc: Path) -> int | None:
    try:
        return int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_workers_under_twistd(tmp_path):
    """`twistd -n wsrouter --workers 2` runs the same supervisor and stops cleanly on SIGTERM."""
    port = free_port()
    log_path = tmp_path / "twistd.log"
    twistd = str(Path(PYTHON).parent / "twistd")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([twistd, "--nodaemon", "--pidfile=", "wsrouter", "--workers", "2",
                                    "--listen", f"tcp:{port}:interface=127.0.0.1", "--route", "/*=echo:"],
                                   stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
    try:
        wait_for_port(port)
        wait_for(lambda: log_path.read_text().count("room for about") == 2, what="both workers listening")
        echo_sessions(f"ws://127.0.0.1:{port}/t", 10)
        pids = [pid for each in worker_pids(log_path.read_text()).values() for pid in each]
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        assert_all_gone(pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_recordings_of_several_workers_do_not_collide(tmp_path):
    """Each worker's session ids carry its number, so every session gets its own recording file."""
    port = free_port()
    record = tmp_path / "rec"
    router = RouterProcess(["--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2",
                            "--record", str(record), "--route", "/*=echo:"], port, tmp_path / "router.log")
    try:
        wait_for(lambda: router.log().count("room for about") == 2, what="both workers listening")
        echo_sessions(f"ws://127.0.0.1:{port}/rec", 20)
        def twenty_recordings() -> list[Path] | None:
            found = sorted(record.iterdir())
            return found if len(found) == 20 else None

        files = wait_for(twenty_recordings, what="20 recordings")
        ids = {json.loads(path.read_text().splitlines()[0])["session"] for path in files}
        assert len(ids) == 20
        assert all(re.fullmatch(r"w[12]\.[0-9a-f]{8}", session) for session in ids), ids
    finally:
        router.stop()


def test_exit_mode_program_stops_supervisor_and_workers_with_its_status(tmp_path):
    """With workers, an exit-mode program's exit stops everything, and the router exits with its status."""
    port = free_port()
    program = [REAL_PYTHON, str(REPO / "tests" / "programs" / "bind_then_exit.py"), str(port), "3", "3"]
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([PYTHON, "-m", "wsrouter", "--workers", "2", "--wrap", "exit", str(port), "--",
                                    *program], stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)
    try:
        assert process.wait(30) == 3
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    text = log_path.read_text()
    assert "exited with status 3; the router exits too" in text
    assert_all_gone([pid for each in worker_pids(text).values() for pid in each])


def test_ignore_mode_program_gone_is_a_502_at_once_in_every_worker(tmp_path):
    """With workers, once an ignore-mode program exited and nothing listens, each worker says 502 and why at once."""
    port = free_port()
    program = [REAL_PYTHON, str(REPO / "tests" / "programs" / "bind_then_exit.py"), str(port), "0.2", "0"]
    router = RouterProcess(["--workers", "2", "--connect-timeout", "40", "--handshake-timeout", "60",
                            "--listen", f"tcp:{port}:interface=127.0.0.1", "--wrap", "ignore", "--", *program],
                           port, tmp_path / "router.log")
    try:
        wait_for(lambda: router.log().count("room for about") == 2, what="both workers listening")
        wait_for(lambda: "ignored, as it may have daemonized" in router.log(), what="the program's exit")
        started = time.monotonic()
        for _ in range(6):  # both workers, whichever accepts
            status, body = handshake_status(f"ws://127.0.0.1:{port}/", open_timeout=60)
            assert status == 502
            assert b"exited with status 0 and is not restarted (mode ignore)" in body
        assert time.monotonic() - started < 30, "clients waited as for a restart"
    finally:
        router.stop()
