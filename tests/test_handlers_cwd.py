"""
The documented handler example, C{wsrouter --route
'/echo=python:examples.handlers.echo:Echo'}, run as a real process from the
checkout the way the installed C{wsrouter} script runs (its own directory on
C{sys.path}, not the current one), finds C{examples/} in the current
directory; the websockets client gets its echo.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .support import REPO, free_port, wait_for_port

#: What the installed console script holds (pyproject's [project.scripts]).
SCRIPT = "import sys\nfrom wsrouter.__main__ import main\nsys.exit(main())\n"


def test_documented_python_example_runs_from_the_checkout(tmp_path: Path) -> None:
    """A router started by a script outside the checkout, in the checkout directory, loads examples.handlers.echo."""
    from websockets.sync.client import connect

    script = tmp_path / "wsrouter"
    script.write_text(SCRIPT)
    env = {key: value for key, value in os.environ.items() if not key.startswith("WSROUTER_")}
    env["PYTHONPATH"] = str(REPO / "src")  # wsrouter itself; not the checkout, where examples/ is
    port = free_port()
    with open(tmp_path / "out.log", "wb") as out:
        child = subprocess.Popen([sys.executable, str(script), "--route", "/echo=python:examples.handlers.echo:Echo",
                                  "--listen", f"tcp:{port}:interface=127.0.0.1"], cwd=REPO, env=env, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=30)
        except TimeoutError:
            raise AssertionError((tmp_path / "out.log").read_text()) from None
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
    finally:
        child.terminate()
        child.wait(10)
