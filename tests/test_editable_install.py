"""
`make install`'s editable install finds the twistd plugin from any directory: the dropins live in
src/twisted/plugins, beside the package, so the install's path entry for src makes Twisted see them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .support import REPO
from .test_packaging import NOT_SOURCE, OFFLINE_HINTS


def test_twistd_finds_the_plugin_after_an_editable_install(tmp_path):
    """In a fresh venv with `pip install -e`, `twistd -n wsrouter --help` run outside the checkout knows wsrouter."""
    source, venv, elsewhere = tmp_path / "checkout", tmp_path / "venv", tmp_path / "elsewhere"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", str(source)], capture_output=True,
                             text=True, timeout=600, check=False, env=env, cwd=elsewhere)
    if install.returncode != 0 and any(hint in install.stdout + install.stderr for hint in OFFLINE_HINTS):
        pytest.skip("installing needs wsrouter's dependencies from a package index, which is not reachable")
    assert install.returncode == 0, install.stdout + install.stderr
    for plugin in (["wsrouter", "--help"], ["--reactor", "wsrouter", "wsrouter", "--help"]):
        result = subprocess.run([str(venv / "bin" / "twistd"), "-n", *plugin], capture_output=True, text=True,
                                timeout=120, check=False, env=env, cwd=elsewhere)
        assert result.returncode == 0 and "--wrap MODE" in result.stdout, result.stdout + result.stderr
