"""
Security headers on every answer of the web root (files, 404, 405), over a
real router on a loopback port, with the default policy and configured ones.
"""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
import pytest_twisted

from wsrouter.config import ConfigError, build_config
from wsrouter.web.static import DEFAULT_CSP

from .support import REPO, in_thread, start_router


def web_router(root: Path, **web: str):
    """A router on a loopback port serving C{root} with these web settings."""
    return start_router(routes=["/ws=echo:"], web=str(root), web_settings=web)


def fetch(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str]]:
    """Status and (lower-cased) headers of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=b"" if method == "POST" else None)
        response = connection.getresponse()
        response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "sub" / "app.js").write_text("1")
    return root


@pytest_twisted.inlineCallbacks
def test_default_headers_on_files_and_errors(www):
    """Files, a missing file, an unlisted directory and a refused method all carry nosniff, CSP and frame options."""
    router = web_router(www)
    try:
        answers = []
        for path, method in [("/", "GET"), ("/sub/app.js", "HEAD"), ("/nope", "GET"), ("/sub/", "GET"),
                             ("/sub/app.js", "POST")]:
            answers.append((yield in_thread(fetch, router.port_number, path, method)))
    finally:
        yield router.stopService()
    assert [status for status, _ in answers] == [200, 200, 404, 404, 405]
    for status, headers in answers:
        assert headers["x-content-type-options"] == "nosniff", status
        assert headers["x-frame-options"] == "SAMEORIGIN", status
        assert headers["content-security-policy"] == DEFAULT_CSP + "; frame-ancestors 'self'", status
        assert headers["referrer-policy"] == "no-referrer", status


@pytest_twisted.inlineCallbacks
def test_configured_policy_and_frame_options(www):
    """A configured policy is sent as written; frame_options deny and off change or drop the framing rules."""
    own = web_router(www, content_security_policy="default-src 'none'", frame_options="deny")
    off = web_router(www, content_security_policy="off", frame_options="off")
    deny = web_router(www, frame_options="deny")
    try:
        _, own_headers = yield in_thread(fetch, own.port_number, "/")
        _, off_headers = yield in_thread(fetch, off.port_number, "/")
        _, deny_headers = yield in_thread(fetch, deny.port_number, "/")
    finally:
        for router in (own, off, deny):
            yield router.stopService()
    assert own_headers["content-security-policy"] == "default-src 'none'"
    assert own_headers["x-frame-options"] == "DENY"
    assert "content-security-policy" not in off_headers and "x-frame-options" not in off_headers
    assert off_headers["x-content-type-options"] == "nosniff"
    assert deny_headers["content-security-policy"].endswith("; frame-ancestors 'none'")


def test_bad_web_header_settings_named():
    """An unknown frame_options value and a multi-line policy are configuration errors under web."""
    with pytest.raises(ConfigError) as caught:
        build_config({"web": {"root": ".", "frame_options": "allow", "content_security_policy": "a\nb"}})
    text = str(caught.value)
    assert "web.frame_options: must be" in text and "web.content_security_policy: must be one line" in text


def test_example_page_needs_no_inline_script():
    """The example web page keeps its script and style in files, so the default policy lets it run."""
    page = (REPO / "examples" / "web" / "index.html").read_text()
    assert "<script>" not in page and "<style>" not in page and 'src="demo.js"' in page
