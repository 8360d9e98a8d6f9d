"""
Per-connection test program for the sandbox: prints, as one JSON line, what
the process sees of its confinement (ids, groups, NoNewPrivs, cwd, limits,
environment, whether a file can be read), then exits.  With --allocate MB
it first allocates that much memory and says so.  Standard library only,
so the system's Python runs it as any user.
"""

import argparse
import json
import os
import resource
import sys


def no_new_privs() -> str:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("NoNewPrivs:"):
                return line.split()[1]
    return "?"


def can_read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return f"errno {e.errno}"
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--read", default="/dev/null")
    parser.add_argument("--allocate", type=int, help="megabytes to allocate first")
    args = parser.parse_args()
    if args.allocate:
        block = bytearray(args.allocate * 2**20)
        print(json.dumps({"allocated": len(block)}), flush=True)
    print(json.dumps({
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "no_new_privs": no_new_privs(), "cwd": os.getcwd(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "memory": resource.getrlimit(resource.RLIMIT_AS)[0],
        "env": dict(os.environ), "read": can_read(args.read),
    }, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
    sys.exit(0)
