"""
Which TCP ports a process listens on, read from /proc (what `ss -ltnp` shows for its PID), so a test can
prove a wrapped program opened no port the router does not cover (x11vnc's separate IPv6 port, say).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

#: /proc/net/tcp's state code for LISTEN.
LISTEN = "0A"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _address(hex_address: str) -> str:
    """/proc/net/tcp's hex address (host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    """The (address, port) pairs process C{pid} listens on over TCP, IPv4 and IPv6 ('::' is every address)."""
    inodes = _socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                address, port = fields[1].split(":")
                found.append((_address(address), int(port, 16)))
    return found


def wrapped_pid(log: str, name: str) -> int:
    """The PID the router's log gives for the (first) start of wrapped program C{name}."""
    found = re.search(rf"started {re.escape(name)} \(pid (\d+)", log)
    assert found is not None, log
    return int(found.group(1))


def reachable_listeners(pid: int) -> list[tuple[str, int]]:
    """The TCP ports process C{pid} listens on beyond loopback (x11vnc's own IPv6 port would be `('::', 5900)`)."""
    return [(address, port) for address, port in tcp_listeners(pid) if not ipaddress.ip_address(address).is_loopback]
