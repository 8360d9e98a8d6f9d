"""The wheel carries what a `pip install` user needs: the compiled shim and the twistd plugin."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from .support import REPO

OFFLINE_HINTS = ("No matching distribution", "Could not find a version", "connection", "Network is unreachable")


def test_wheel_ships_rebind_so_and_the_plugin(tmp_path):
    """`pip wheel .` builds rebind.so into the wheel and includes twisted/plugins/wsrouter_plugin.py."""
    source = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(REPO), str(source)], check=True, timeout=60)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0 and any(hint in result.stdout + result.stderr for hint in OFFLINE_HINTS):
        pytest.skip("building a wheel needs setuptools from the package index, which is not reachable")
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("wsrouter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsrouter/rebind/rebind.so" in names
    assert "wsrouter/rebind/rebind.c" in names
    assert "twisted/plugins/wsrouter_plugin.py" in names
    assert "wsrouter/frames.py" in names
