"""
The sandbox for programs wsrouter starts (docs/sandbox.md), end to end: a
real router process runs exec commands and wrapped programs as another
user with rlimits, an environment allowlist, no_new_privs and a working
directory; plus the config and the pure helpers below them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from wsrouter.config import ConfigError, Sandbox, build_config, to_data
from wsrouter.preflight import preflight
from wsrouter.process.sandbox import SandboxError, allowed_environment, sandbox_command, share_directory

from .listening import reachable_listeners
from .other_user import OTHER_GID, OTHER_UID, connect_as_other_user, needs_root
from .support import REPO, RouterProcess, connect, free_port
from .test_instances import group_members

PROBE = str(REPO / "tests" / "programs" / "sandbox_probe.py")
TCP_SERVER = str(REPO / "tests" / "programs" / "tcp_server.py")
#: An interpreter any user can run (the tests' own may live under /root).
SYSTEM_PYTHON = "/usr/bin/python3"


def _reachable_by_others(path: str) -> bool:
    """Every directory above C{path} lets other users pass, and the file is readable by them."""
    parent = os.path.dirname(path)
    while parent != "/":
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(parent)
    return bool(os.stat(path).st_mode & stat.S_IROTH)


as_other_user = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK) or not _reachable_by_others(PROBE),
    reason="needs root, /usr/bin/python3 and a checkout other users can read, to run programs as nobody")


def toml_value(value: object) -> str:
    return json.dumps(value)  # the JSON forms used here (strings, lists, numbers, booleans) are TOML too


def write_config(tmp_path: Path, sandbox: dict[str, object], routes: str, programs: str = "") -> Path:
    lines = ["[sandbox.jail]", *(f"{key} = {toml_value(value)}" for key, value in sandbox.items())]
    path = tmp_path / "wsrouter.toml"
    path.write_text("\n".join(lines) + "\n" + programs + routes)
    return path


@pytest.fixture
def router_with(tmp_path: Path) -> Iterator[object]:
    """Starts a router process on a config file; stops it (and so its children) afterwards."""
    started: list[RouterProcess] = []

    def start(config: Path) -> RouterProcess:
        port = free_port()
        router = RouterProcess(["--config", str(config), "--listen", f"tcp:{port}:interface=127.0.0.1"],
                               port, tmp_path / f"router{len(started)}.log")
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


def exec_route(path: str, *args: str, sandbox: bool = True) -> str:
    command = [SYSTEM_PYTHON, PROBE, *args]
    return (f'[[routes]]\npath = "{path}"\ntarget = {toml_value("exec:" + " ".join(command))}\n'
            + ('sandbox = "jail"\n' if sandbox else ""))


def wait_for_log(router: RouterProcess, text: str) -> None:
    """Until C{text} is in the router's log (bounded: 10 s)."""
    for _ in range(200):
        if text in router.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{router.log()}")


def probe(router: RouterProcess, path: str = "/probe") -> dict[str, object]:
    with connect(f"{router.url}{path}") as ws:
        return json.loads(ws.recv(timeout=15))  # type: ignore[no-any-return]


# -- end to end: exec commands --------------------------------------------------------


@needs_root
@as_other_user
def test_exec_command_runs_as_nobody_and_cannot_read_a_root_file(tmp_path, router_with):
    """A sandboxed command runs as nobody:nogroup with no supplementary groups and cannot read a 0600 root file."""
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    config = write_config(tmp_path, {"user": "nobody", "group": "nogroup"},
                          exec_route("/probe", "--read", str(secret)) + exec_route("/root", "--read", str(secret),
                                                                                    sandbox=False))
    router = router_with(config)
    seen = probe(router)
    assert (seen["uid"], seen["euid"], seen["gid"], seen["groups"]) == (OTHER_UID, OTHER_UID, OTHER_GID, [])
    assert seen["read"] == "errno 13"  # EACCES
    assert probe(router, "/root")["read"] == "ok"  # the same command unsandboxed reads it: the file is readable


@needs_root
@as_other_user
def test_limits_env_no_new_privs_and_cwd_are_what_the_program_sees(tmp_path, router_with):
    """open_files, memory, the env allowlist (plus the route's own env), NoNewPrivs: 1 and cwd reach the program."""
    config = write_config(tmp_path, {"user": "nobody", "open_files": 37, "memory": 512 * 2**20,
                                     "env": ["PATH", "HTTP_*"], "cwd": "/tmp"},
                          exec_route("/probe") + 'env = { GREETING = "hi" }\n')
    router = router_with(config)
    seen = probe(router)
    env = seen["env"]
    assert isinstance(env, dict)
    assert (seen["nofile"], seen["memory"], seen["no_new_privs"], seen["cwd"]) == (37, 512 * 2**20, "1", "/tmp")
    assert env["GREETING"] == "hi" and "PATH" in env and "HTTP_HOST" in env
    assert not {"REMOTE_ADDR", "SERVER_SOFTWARE", "GATEWAY_INTERFACE", "HTTP_"} & set(env)


@needs_root
@as_other_user
def test_no_sandbox_keeps_root_and_the_whole_environment(tmp_path, router_with):
    """Without a sandbox the same command runs as the router's user with its usual CGI environment."""
    config = write_config(tmp_path, {"user": "nobody"}, exec_route("/probe", sandbox=False))
    seen = probe(router_with(config))
    assert seen["uid"] == 0 and seen["no_new_privs"] == "0"
    assert "REMOTE_ADDR" in seen["env"]  # type: ignore[operator]


@needs_root
@as_other_user
def test_memory_limit_kills_the_program_not_the_router(tmp_path, router_with):
    """A command allocating past its memory limit dies; the router keeps its own limits and keeps serving."""
    config = write_config(tmp_path, {"user": "nobody", "memory": 256 * 2**20},
                          exec_route("/hog", "--allocate", "1024") + exec_route("/probe"))
    router = router_with(config)
    messages = []
    with connect(f"{router.url}/hog") as ws, pytest.raises(ConnectionClosed):
        for _ in range(5):  # the command dies; the router closes the session
            messages.append(ws.recv(timeout=15))
    assert not any("allocated" in m for m in messages)
    assert re.search(r"MemoryError|exit", router.log())
    wait_for_log(router, "limits address space to 268435456 bytes (memory)")
    limits = Path(f"/proc/{router.pid}/limits").read_text()
    assert re.search(r"Max address space\s+unlimited", limits)  # the router itself is untouched
    assert probe(router)["uid"] == OTHER_UID  # and still serves


# -- end to end: a wrapped program on a private socket ---------------------------------


@needs_root
@as_other_user
def test_wrapped_program_as_nobody_on_its_private_socket(tmp_path, router_with):
    """A wrapped server runs as nobody in its private directory (now nobody's); a third uid cannot connect to it."""
    command = [SYSTEM_PYTHON, TCP_SERVER, "--host", "0.0.0.0", "--port", str(free_port()), "--banner", "hello",
               "--echo"]
    programs = f'[programs.srv]\nmode = "respawn"\ncommand = {toml_value(command)}\nsandbox = "jail"\n'

    config = write_config(tmp_path, {"user": "nobody"}, '[[routes]]\npath = "/srv"\ntarget = "program:srv"\n',
                          programs)
    router = router_with(config)
    with connect(f"{router.url}/srv") as ws:
        assert ws.recv(timeout=15) == b"hello\n"
        ws.send(b"ping")
        assert ws.recv(timeout=15) == b"ping"
    log = router.log()
    pid = int(re.findall(r"started srv \(pid (\d+)", log)[0])
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"Uid:\s+{OTHER_UID}\s+{OTHER_UID}", status)
    socket_path = re.findall(r"the private socket (\S+)", log)[0]
    directory = os.stat(os.path.dirname(socket_path))
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (OTHER_UID, 0o700)
    assert connect_as_other_user(socket_path, uid=1, gid=1) == 13  # daemon: EACCES
    router.stop()
    assert not os.path.exists(os.path.dirname(socket_path))


@needs_root
@as_other_user
def test_per_session_instance_runs_in_the_sandbox(tmp_path, router_with):
    """A per-session instance runs its filled-in command as the sandbox's user and serves its session."""
    command = [SYSTEM_PYTHON, TCP_SERVER, "--host", "127.0.0.1", "--port", str(free_port()), "--banner",
               "hello-{query.who}", "--echo"]
    programs = (f'[programs.srv]\nmode = "per-session"\ncommand = {toml_value(command)}\n'
                'sandbox = "jail"\n')
    config = write_config(tmp_path, {"user": "nobody"}, '[[routes]]\npath = "/srv"\ntarget = "program:srv"\n',
                          programs)
    router = router_with(config)
    with connect(f"{router.url}/srv?who=ann") as ws:
        assert ws.recv(timeout=15) == b"hello-ann\n"
        pid = int(re.findall(r"started srv\.1 \(pid (\d+)", router.log())[0])
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(rf"Uid:\s+{OTHER_UID}\s+{OTHER_UID}", status)
        socket_path = re.findall(r"listening on the private socket (\S+) instead", router.log())[0]
        assert Path(socket_path).parent.stat().st_uid == OTHER_UID
        assert connect_as_other_user(socket_path, uid=1, gid=1) == 13  # daemon: EACCES
        ws.send(b"ping")
        assert ws.recv(timeout=15) == b"ping"
    for _ in range(300):  # the session is over: the instance and its directory go (bounded wait)
        if not Path(f"/proc/{pid}").exists() and not Path(socket_path).parent.exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() and not Path(socket_path).parent.exists()


# -- config and helpers ----------------------------------------------------------------


def test_unknown_user_and_group_are_config_errors_naming_the_key():
    """An unknown user or group, or a sandbox no table defines, is a config error with its key path."""
    with pytest.raises(ConfigError) as caught:
        build_config({"sandbox": {"jail": {"user": "nobody"}, "bad": {"user": "no-such-user-xyz",
                                                                      "group": "no-such-group-xyz"}},
                      "routes": [{"path": "/", "target": "exec:cat", "sandbox": "jial"}]})
    problems = dict(caught.value.problems)
    assert "no such user" in problems["sandbox.bad.user"]
    assert "no such group" in problems["sandbox.bad.group"]
    assert "no sandbox 'jial'" in problems["routes[0].sandbox"] and "jail" in problems["routes[0].sandbox"]


def test_sandbox_only_for_exec_routes_and_round_trips():
    """A route's sandbox is refused for non-exec targets; a program's and an exec route's survive to_data."""
    with pytest.raises(ConfigError) as caught:
        build_config({"sandbox": {"j": {}}, "routes": [{"path": "/", "target": "echo:", "sandbox": "j"}]})
    assert "only for exec" in dict(caught.value.problems)["routes[0].sandbox"]
    raw = {"sandbox": {"j": {"user": "nobody", "processes": 5, "env": ["PATH"], "no_new_privs": False}},
           "programs": {"p": {"mode": "respawn", "command": ["srv"], "sandbox": "j"}},
           "routes": [{"path": "/", "target": "program:p"}, {"path": "/e", "target": "exec:cat", "sandbox": "j"}]}
    config = build_config(raw)
    assert config.programs[0].sandbox == Sandbox(name="j", user="nobody", processes=5, env=("PATH",),
                                                 no_new_privs=False)
    assert build_config(to_data(config)) == config


@pytest.mark.parametrize("fields, key", [({"memory": 0}, "memory"), ({"cwd": "tmp"}, "cwd"),
                                         ({"env": ["A=B"]}, "env[0]"), ({"group": "nogroup"}, "group"),
                                         ({"no_new_privs": "yes"}, "no_new_privs")])
def test_bad_sandbox_fields(fields, key):
    """Each malformed sandbox field is reported under its own key."""
    with pytest.raises(ConfigError) as caught:
        Sandbox(name="j", **fields)
    assert key in dict(caught.value.problems)


def test_allowlist_keeps_listed_names_prefixes_and_route_env():
    """Only listed names and PREFIX* matches pass, plus the always-kept names; no list keeps everything."""
    env = {"PATH": "/bin", "HOME": "/root", "HTTP_HOST": "h", "HTTPS": "on", "SECRET": "s", "MINE": "1"}
    sandbox = Sandbox(name="j", env=("PATH", "HTTP_*"))
    assert allowed_environment(env, sandbox, always=["MINE"]) == {"PATH": "/bin", "HTTP_HOST": "h", "MINE": "1"}
    assert allowed_environment(env, Sandbox(name="j")) == env
    assert allowed_environment(env, None) == env


def test_sandbox_command_carries_the_settings():
    """The stage gets the limits, ids and cwd as JSON, then the program's argv unchanged."""
    if os.geteuid() != 0:
        pytest.skip("switching to nobody needs root")
    argv = sandbox_command(Sandbox(name="j", user="nobody", cpu_seconds=3, open_files=9, cwd="/tmp"), ["prog", "a b"])
    spec = json.loads(argv[5])
    assert argv[1:4] == ["-I", "-S", "-c"] and argv[6:] == ["prog", "a b"]
    assert spec["limits"] == [["RLIMIT_CPU", 3], ["RLIMIT_NOFILE", 9]]
    assert (spec["uid"], spec["gid"], spec["cwd"], spec["no_new_privs"]) == (OTHER_UID, OTHER_GID, "/tmp", True)


def test_switching_users_without_root_is_refused(monkeypatch):
    """A router that is not root gets a clear SandboxError, not a child that dies later."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match="needs the router to run as root"):
        sandbox_command(Sandbox(name="j", user="nobody"), ["prog"])


@needs_root
def test_share_directory_refuses_a_closed_parent(tmp_path):
    """A private directory under a parent other users cannot pass is refused, naming what to change."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    inner = closed / "d"
    inner.mkdir(mode=0o700)
    with pytest.raises(SandboxError, match="TMPDIR"):
        share_directory(str(inner), Sandbox(name="j", user="nobody"))


def test_the_stage_runs_a_program_with_its_limits(tmp_path):
    """The stage itself (no router): the program runs in cwd with the open-files limit and no_new_privs set."""
    argv = sandbox_command(Sandbox(name="j", open_files=21, cwd=str(tmp_path)),
                           [SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else "python3", PROBE], setsid=False)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True,
                            env={"PATH": os.defpath})
    seen = json.loads(result.stdout)
    assert (seen["nofile"], seen["cwd"], seen["no_new_privs"]) == (21, str(tmp_path), "1")


def test_the_stage_reports_what_it_cannot_do(tmp_path):
    """A missing working directory: exit 126 and one line saying what failed."""
    argv = sandbox_command(Sandbox(name="j", cwd=str(tmp_path / "missing")), ["true"], setsid=False)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 126
    assert result.stderr.startswith("wsrouter sandbox: cannot enter ") and "No such file" in result.stderr



def test_preflight_reports_a_missing_cwd_and_a_user_it_cannot_switch_to(tmp_path, monkeypatch):
    """Start-up checks name the sandbox key: a cwd not on this machine; a user while the router is not root."""
    config = build_config({"sandbox": {"j": {"user": "nobody", "cwd": str(tmp_path / "gone")}},
                           "routes": [{"path": "/", "target": "exec:cat", "sandbox": "j"}]})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    problems = dict(preflight(config))
    assert "no directory" in problems["sandbox.j.cwd"]
    assert "needs the router to run as root" in problems["sandbox.j.user"]


def test_the_stage_cpu_limit_kills_a_busy_loop():
    """A program spinning past cpu_seconds is killed by the kernel (SIGKILL, as soft = hard)."""
    python = SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else "python3"
    argv = sandbox_command(Sandbox(name="j", cpu_seconds=1), [python, "-c", "while True: pass"], setsid=False)
    assert subprocess.run(argv, timeout=60, check=False).returncode == -9


@needs_root
@as_other_user
def test_per_session_x11vnc_on_xvfb_as_nobody(tmp_path, router_with):
    """Two sessions each get an Xvfb + x11vnc run as nobody (both asking for port 5900); a third uid is refused."""
    if not shutil.which("Xvfb") or not shutil.which("x11vnc"):
        pytest.skip("Xvfb/x11vnc not installed: tests/setup/system-deps.sh installs them")
    script = ("Xvfb -displayfd 1 -nolisten tcp -screen 0 320x240x16 2>/dev/null | { read d; "
              "exec x11vnc -display :$d -rfbport 5900 -rfbportv6 5900 -nopw -quiet -forever -shared; }")
    programs = ('[programs.vnc]\nmode = "per-session"\n'
                f'command = {toml_value(["sh", "-c", script.replace("{", "{{").replace("}", "}}")])}\n'
                'keep_env = true\nports = "5900"\nready_timeout = 20\nsandbox = "jail"\n')
    config = write_config(tmp_path, {"user": "nobody"},
                          '[limits]\nhandshake_timeout = 25\n\n[[routes]]\npath = "/vnc"\ntarget = "program:vnc"\n',
                          programs)
    router = router_with(config)
    with connect(f"{router.url}/vnc", open_timeout=25) as one, connect(f"{router.url}/vnc", open_timeout=25) as two:
        assert one.recv(timeout=20).startswith(b"RFB 003.") and two.recv(timeout=20).startswith(b"RFB 003.")
        pids = [int(pid) for pid in re.findall(r"started vnc\.\d \(pid (\d+)", router.log())]
        sockets = re.findall(r"asked for port 5900; listening on the private socket (\S+) instead", router.log())
        assert len(set(pids)) == 2 and len({Path(path).parent for path in sockets}) == 2
        members = group_members(pids)  # the whole groups run as nobody: x11vnc (sh exec'd it) and Xvfb
        assert sorted(name for _, name in members).count("Xvfb") == 2
        assert [reachable_listeners(pid) for pid, name in members if name == "x11vnc"] == [[], []]
        for member, _ in members:
            assert re.search(rf"Uid:\s+{OTHER_UID}\s", Path(f"/proc/{member}/status").read_text())
        for path in sockets:
            assert connect_as_other_user(path, uid=1, gid=1) == 13  # daemon: EACCES
    for _ in range(400):  # sessions over: every instance and directory goes (bounded wait)
        if not any(Path(f"/proc/{pid}").exists() for pid in pids) and not any(
                Path(path).parent.exists() for path in sockets):
            break
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not any(Path(path).parent.exists() for path in sockets)

