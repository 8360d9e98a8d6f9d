"""Headless Chromium for the browser tests, driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` (installed by
tests/setup/system-deps.sh) are used as they are: no downloaded browser
builds, and no Selenium Manager lookups.  Where either is missing the tests
that ask for a browser skip and say why.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)

# Flags that keep a headless Chromium quiet on a machine with a closed
# network and as root: no background lookups, no sandbox (root), no GPU.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1024,768",
)


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_missing() -> str | None:
    """Why no browser test can run here, or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    if _which(CHROMIUM_NAMES) is None:
        return "Debian's chromium is not installed (tests/setup/system-deps.sh)"
    if _which(DRIVER_NAMES) is None:
        return "Debian's chromium-driver is not installed (tests/setup/system-deps.sh)"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A fresh headless Chromium with its own empty profile, quit on exit."""
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    binary = _which(CHROMIUM_NAMES)
    assert binary is not None
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="wsrouter-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=_which(DRIVER_NAMES), env={**os.environ, "SE_AVOID_STATS": "true"})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium for one test (skips, saying why, where there is none)."""
    with chromium() as driver:
        yield driver
