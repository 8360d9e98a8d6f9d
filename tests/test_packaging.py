"""The wheel carries what a `pip install` user needs: every module, the compiled shim and the twistd plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from .support import REPO

OFFLINE_HINTS = ("No matching distribution", "Could not find a version", "connection", "Network is unreachable")

#: Not part of the source tree under test: environments, caches, earlier build
#: output, and any rebind.so built in place (the wheel's must come from the build).
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "_trial_temp", "*.so",
    "dropin.cache",
)


def test_wheel_ships_every_module_rebind_so_and_the_plugin(tmp_path):
    """`pip wheel` on the tree under test ships every module, a freshly compiled rebind.so and the twistd plugin."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    if result.returncode != 0 and any(hint in result.stdout + result.stderr for hint in OFFLINE_HINTS):
        pytest.skip("building a wheel needs setuptools from the package index, which is not reachable")
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("wsrouter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(REPO / "src").as_posix() for path in (REPO / "src" / "wsrouter").rglob("*.py")}
    assert "wsrouter/ws/parser.py" in modules  # the walk found the package, not nothing
    assert sorted(modules - names) == []
    assert {"wsrouter/rebind/rebind.so", "wsrouter/rebind/rebind.c", "twisted/plugins/wsrouter_plugin.py"} <= names


def _build_wheel(tmp_path, env=None):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    if result.returncode != 0 and any(hint in result.stdout + result.stderr for hint in OFFLINE_HINTS):
        pytest.skip("building a wheel needs setuptools from the package index, which is not reachable")
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("wsrouter-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_wheel_ships_the_compiled_frame_codec(tmp_path):
    """Where a compiler and Python's headers exist, the wheel carries the frame codec extension built from _frames.c."""
    include = sysconfig.get_paths()["include"]
    if shutil.which(os.environ.get("CC", "cc")) is None or not os.path.exists(os.path.join(include, "Python.h")):
        pytest.skip("no C compiler or no Python headers (tests/setup/system-deps.sh installs python3-dev)")
    assert "wsrouter/ws/_frames.abi3.so" in _build_wheel(tmp_path)


def test_wheel_builds_without_a_compiler(tmp_path):
    """With no working C compiler the wheel still builds, without the frame codec (wsrouter falls back to Python's)."""
    names = _build_wheel(tmp_path, env={**os.environ, "CC": "false"})
    assert "wsrouter/ws/parser.py" in names
    assert not [name for name in names if "_frames" in name and name.endswith(".so")]
