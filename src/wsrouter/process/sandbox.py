"""
Starting a program inside its C{[sandbox.NAME]}: another user and group
(supplementary groups cleared), rlimits, an environment allowlist,
C{no_new_privs} and a working directory.  Wrapped programs
(L{wsrouter.process.wrapped}) and exec commands (L{wsrouter.targets.exec})
both build their command line with L{sandbox_command}.

Twisted's C{spawnProcess} forks and execs with no hook in between (its
C{uid}/C{gid} also call C{initgroups}, keeping the user's supplementary
groups).  So the child first execs this interpreter with a small stage
(L{STAGE}, passed with C{-c}, under C{-I -S}): it applies the sandbox, as
root while it can, then execs the program.  The stage is source text, not
C{python -m wsrouter...}: it must not import the router's package, which
the sandbox user may not be able to read (a virtualenv under C{/root}), and
the interpreter is only run before the user changes.  The stage also does
what the plain launchers do (a process session of its own, the shim's
deferred variables), since it is the last program before the real one.

Nothing here needs Twisted; the stage's failures go to the program's
stderr (logged by the caller) with exit status 126.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence

from wsrouter.config import ExecTarget, RouterConfig, Sandbox
from wsrouter.rebind import ShimUnavailable, find_shim

__all__ = ["CHILD_ENVIRONMENT", "STAGE", "SandboxError", "allowed_environment", "limit_hint", "sandbox_command",
           "sandbox_ids", "sandbox_problems", "share_directory"]

#: Child-script lines (run with C{python -I -S -c}, C{os} imported, C{prefix}
#: set) that make C{env} the environment the process was given, with the
#: variables deferred under C{prefix} put in place.  Not C{os.environ}: the
#: interpreter adds to that (C{LC_CTYPE=C.UTF-8} when no locale is set, PEP
#: 538), and the program must get exactly what was allowed.
CHILD_ENVIRONMENT = r"""
try:
    with open("/proc/self/environ", "rb") as f:
        env = {os.fsdecode(k): os.fsdecode(v) for k, _, v in
               (item.partition(b"=") for item in f.read().split(b"\0") if b"=" in item)}
except OSError:
    env = dict(os.environ)
for key in [k for k in env if prefix and k.startswith(prefix)]:
    env[key[len(prefix):]] = env.pop(key)
"""

#: Runs in the child: rlimits, groups, gid, uid, no_new_privs, cwd, then the program.
STAGE = r"""
import ctypes, json, os, sys, resource  # all before the user changes: the stdlib may be unreadable after
import warnings  # os.execvp's PATH search imports it: a program named without a '/' would fail as the user
spec = json.loads(sys.argv[1])
argv = sys.argv[2:]
def die(what, e):
    sys.stderr.write("wsrouter sandbox: cannot %s: %s\n" % (what, getattr(e, "strerror", None) or e))
    os._exit(126)
if spec["setsid"]:
    os.setsid()
prefix = spec["defer"]
""" + CHILD_ENVIRONMENT + r"""
for name, value in spec["limits"]:
    try:
        resource.setrlimit(getattr(resource, name), (value, value))
    except (OSError, ValueError) as e:
        die("set %s to %d" % (name, value), e)
if spec["uid"] is not None:
    try:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    except OSError as e:
        die("switch to uid %d gid %d" % (spec["uid"], spec["gid"]), e)
    if os.getuid() != spec["uid"] or os.geteuid() != spec["uid"] or os.getegid() != spec["gid"]:
        die("switch users", "the ids did not change")
if spec["no_new_privs"]:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        die("set no_new_privs", OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno())))
try:
    os.chdir(spec["cwd"])
except OSError as e:
    die("enter %s" % spec["cwd"], e)
try:
    os.execvpe(argv[0], argv, env)
except Exception as e:  # OSError; anything else still gets the one-line form
    die("run %s" % argv[0], e)
"""

#: The resource module's names for the sandbox's limits.
_LIMITS = (("cpu_seconds", "RLIMIT_CPU"), ("memory", "RLIMIT_AS"), ("open_files", "RLIMIT_NOFILE"),
           ("processes", "RLIMIT_NPROC"))


#: Signals a program dies of when an allocation fails and it does not check (or aborts on purpose).
_ALLOCATION_DEATHS = (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGKILL)


def limit_hint(sandbox: Sandbox | None, code: int | None, signum: int | None) -> str | None:
    """
    For the log: which of C{sandbox}'s limits may explain a program ending
    with exit C{code} or signal C{signum}, or C{None} (a clean exit, no limit
    that fits).  The kernel does not say why a process failed, so this names
    the likely limit, with its value, rather than asserting it.
    """
    if sandbox is None or (code == 0 and signum is None) or (code is None and signum is None):
        return None
    if sandbox.cpu_seconds is not None and signum in (signal.SIGXCPU, signal.SIGKILL):
        return (f"the sandbox {sandbox.name!r} limits CPU time to {sandbox.cpu_seconds} s (cpu_seconds): when a"
                " process has used that much, the kernel kills it (SIGKILL)")
    if sandbox.memory is not None and (signum in _ALLOCATION_DEATHS or signum is None):
        return (f"the sandbox {sandbox.name!r} limits address space to {sandbox.memory} bytes (memory): an"
                " allocation past it fails (MemoryError, malloc returning NULL), which often ends a program"
                " like this; see its stderr above")
    return None


class SandboxError(Exception):
    """A sandbox cannot be applied by this router (not root, a directory the user cannot reach); says what to do."""


def sandbox_ids(sandbox: Sandbox) -> tuple[int, int] | None:
    """
    The uid and gid the sandbox runs as (the group by default the user's
    primary one), or C{None} if it keeps the router's user.

    @raise SandboxError: the user or group is gone since the configuration
        was read, or the router cannot switch to them (it is not root).
    """
    if sandbox.user is None:
        return None
    try:
        user = pwd.getpwuid(sandbox.user) if isinstance(sandbox.user, int) else pwd.getpwnam(sandbox.user)
        if sandbox.group is None:
            gid = user.pw_gid
        else:
            group = grp.getgrgid(sandbox.group) if isinstance(sandbox.group, int) else grp.getgrnam(sandbox.group)
            gid = group.gr_gid
    except KeyError as e:
        raise SandboxError(f"sandbox {sandbox.name}: {e.args[0]}") from None
    if os.geteuid() != 0 and (user.pw_uid, gid) != (os.geteuid(), os.getegid()):
        raise SandboxError(f"sandbox {sandbox.name}: running programs as user {sandbox.user!r} needs the router "
                           "to run as root (or leave the sandbox's user out)")
    return user.pw_uid, gid


def _allowed(name: str, allowlist: Sequence[str]) -> bool:
    return any(name == entry or (entry.endswith("*") and name.startswith(entry[:-1])) for entry in allowlist)


def allowed_environment(env: Mapping[str, str], sandbox: Sandbox | None,
                        always: Sequence[str] = ()) -> dict[str, str]:
    """
    C{env} with only the sandbox's allowed names (a trailing C{*} matches a
    prefix), plus the names in C{always} (a route's own C{env} pairs); all
    of C{env} when there is no sandbox or it has no C{env} list.
    """
    if sandbox is None or sandbox.env is None:
        return dict(env)
    return {name: value for name, value in env.items() if name in always or _allowed(name, sandbox.env)}


def sandbox_command(sandbox: Sandbox, argv: Sequence[str], *, setsid: bool = True,
                    defer_prefix: str | None = None) -> list[str]:
    """
    The command line that runs C{argv} (C{argv[0]} searched on the child's
    C{PATH}) inside C{sandbox}, in a process session of its own when
    C{setsid}; variables named C{defer_prefix + NAME} become C{NAME} just
    before the program runs (the shim's, see L{wsrouter.process.wrapped}).

    @raise SandboxError: see L{sandbox_ids}.
    """
    ids = sandbox_ids(sandbox)
    limits = [(name, getattr(sandbox, key)) for key, name in _LIMITS if getattr(sandbox, key) is not None]
    spec = {"setsid": setsid, "defer": defer_prefix, "limits": limits,
            "uid": ids[0] if ids else None, "gid": ids[1] if ids else None,
            "no_new_privs": sandbox.no_new_privs, "cwd": sandbox.cwd}
    return [sys.executable, "-I", "-S", "-c", STAGE, json.dumps(spec), *argv]


def _closed_above(path: str) -> str | None:
    """The first directory from C{path}'s parent up to C{/} that other users cannot pass, if any."""
    parent = os.path.dirname(path)
    while True:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def sandbox_problems(config: RouterConfig) -> Iterator[tuple[str, str]]:
    """
    Start-up checks (L{wsrouter.preflight}): each sandbox in use can be
    applied by this router and its C{cwd} exists; a wrapped program run as
    another user can load the shim (ld.so opens it as that user).
    """
    used = {program.sandbox for program in config.programs} | {
        route.target.sandbox for route in config.routes if isinstance(route.target, ExecTarget)}
    for sandbox in sorted((s for s in used if s is not None), key=lambda s: s.name):
        try:
            sandbox_ids(sandbox)
        except SandboxError as e:
            yield f"sandbox.{sandbox.name}.user", str(e)
        if not os.path.isdir(sandbox.cwd):
            yield f"sandbox.{sandbox.name}.cwd", f"no directory {sandbox.cwd!r} on this machine"
    for program in config.programs:
        if program.sandbox is None or program.sandbox.user is None:
            continue
        try:
            shim = find_shim()
        except ShimUnavailable:
            continue  # reported when the program starts, as without a sandbox
        closed = _closed_above(shim)
        if closed is not None or not os.stat(shim).st_mode & stat.S_IROTH:
            yield (f"programs.{program.name}.sandbox",
                   f"user {program.sandbox.user!r} cannot load the rebind shim {shim} "
                   f"({closed or shim} is closed to other users): install wsrouter where every user can read it")


def share_directory(path: str, sandbox: Sandbox | None) -> None:
    """
    Hand a wrapped program's private socket directory (mode 0700) to its
    sandbox user, so the program can bind there while other users still
    cannot enter; the router (root) still can.  Nothing to do without a
    sandbox user.

    @raise SandboxError: a directory above it is closed to other users
        (such as C{$XDG_RUNTIME_DIR}), so the program could not reach it.
    """
    ids = None if sandbox is None else sandbox_ids(sandbox)
    if ids is None or ids[0] == os.geteuid():
        return
    closed = _closed_above(path)
    if closed is not None:
        raise SandboxError(f"sandbox {sandbox.name if sandbox else ''}: the private socket directory {path} "
                           f"lies in {closed}, which user {sandbox.user if sandbox else ''!r} cannot enter: "
                           "unset XDG_RUNTIME_DIR or set TMPDIR to a directory other users can pass (such as /tmp)")
    os.chown(path, ids[0], ids[1])
