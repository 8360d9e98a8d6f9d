"""
Connecting to a Unix socket as another user, for the private-socket tests.

The check forks this test process and drops to the other uid and gid (no
supplementary groups) in the child, which then calls connect(): exec-ing a
helper under setpriv or runuser would need an interpreter that user can
run, and the tests' Python often lives in a directory (such as /root) that
it cannot enter.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

#: The unprivileged user and group the checks run as (nobody / nogroup).
OTHER_UID = 65534
OTHER_GID = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")


def connect_as_other_user(path: str, uid: int = OTHER_UID, gid: int = OTHER_GID,
                          kind: int = socket.SOCK_STREAM) -> int:
    """
    Try to connect to the Unix socket C{path} as C{uid}:C{gid}; return 0 on
    success, else the errno connect() (or the drop itself) failed with.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, only system calls and _exit
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                code = errno.EPERM
            else:
                with socket.socket(socket.AF_UNIX, kind) as sock:
                    sock.settimeout(5)
                    sock.connect(path)
        except OSError as e:
            code = e.errno or errno.EIO
        finally:
            os.write(write_end, str(code).encode())
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as reader:
            answer = reader.read()
    finally:
        os.waitpid(pid, 0)
    return int(answer)


def assert_only_the_directory_refuses(socket_path: str, uid: int = OTHER_UID, gid: int = OTHER_GID,
                                      kind: int = socket.SOCK_STREAM) -> None:
    """
    Another uid gets EACCES connecting to C{socket_path}, and the socket's own
    (0700) directory is what refuses it: every directory above lets others pass,
    so the check cannot pass merely because a test's temp dir is private.
    """
    directory = os.path.dirname(os.path.abspath(socket_path))
    assert os.stat(directory).st_mode & 0o077 == 0, f"{directory} is not private"
    parent = os.path.dirname(directory)
    while True:
        assert os.stat(parent).st_mode & 0o001, f"{parent} does not let other users pass: the check would be vacuous"
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    assert connect_as_other_user(socket_path, uid, gid, kind) == errno.EACCES
