"""
Build hook: compile the rebind.so LD_PRELOAD shim into the wheel, and the
optional frame codec extension (wsrouter.ws._frames, see wsrouter/ws/codec.py).

All metadata lives in pyproject.toml; this file only adds commands. The shim
is not a Python extension (it never links libpython), so it is compiled here
instead of through ext_modules, and the wheel is tagged for the platform but
not for a Python version or ABI. Without a C compiler the build warns and
ships no shim: wsrouter then compiles it into the user's cache on first use,
or says what to install.

The frame codec is an ordinary extension module on Python's stable ABI
(one build serves CPython 3.11 and later), marked optional: without a
compiler or Python's headers the build warns and wsrouter uses its
pure-Python codec.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sysconfig

from setuptools import Distribution, Extension, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 keeps it in the wheel package
    from wheel.bdist_wheel import bdist_wheel

SOURCE = os.path.join("src", "wsrouter", "rebind", "rebind.c")
SHIM = os.path.join("wsrouter", "rebind", "rebind.so")

#: Optional: a failed compile is a warning, and the pure-Python codec is used.
FRAMES = Extension("wsrouter.ws._frames", [os.path.join("src", "wsrouter", "ws", "_frames.c")],
                   py_limited_api=True, optional=True)


def _compiler() -> list[str] | None:
    """$CC, else the compiler Python was built with, else cc; the first that exists."""
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc"):
        argv = shlex.split(candidate or "")
        if argv and shutil.which(argv[0]) is not None:
            return argv
    return None


class build_py_with_shim(build_py):
    """build_py, then compile the shim next to the package's modules."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # editable installs use the in-tree shim the Makefile builds
        compiler = _compiler()
        if compiler is None:
            self.warn("no C compiler found: the wheel carries only a rebind.so already "
                      "built in the source tree, if any; without one, wsrouter builds it "
                      "on first use or says what to install")
            return
        target = os.path.join(self.build_lib, SHIM)
        command = [*compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra",
                   "-o", target, SOURCE, "-ldl"]
        self.announce(" ".join(command), level=logging.INFO)
        try:
            subprocess.run(command, check=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            self.warn(f"compiling rebind.so failed ({e}): the wheel carries only "
                      "a rebind.so already built in the source tree, if any")


class NativeDistribution(Distribution):
    """Carries native code, so wheels install into platlib and get a platform tag."""

    def has_ext_modules(self) -> bool:
        return True


class platform_wheel(bdist_wheel):
    """Tag the wheel py3-none-<platform>: native code, but no Python ABI."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    distclass=NativeDistribution,
    ext_modules=[FRAMES],
    cmdclass={"build_py": build_py_with_shim, "bdist_wheel": platform_wheel},
)
