"""
End-to-end tests for L{wsrouter.web.static}: a real Site on a loopback port,
asked with raw HTTP bytes so that request paths arrive exactly as written
(HTTP client libraries normalise C{..} away before sending).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from wsrouter.web.static import build_web_root

SECRET = b"TOP-SECRET-0f8a1c"
PASSWD_MARK = b"root:"


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


def raw_request(port: int, request: bytes) -> Response:
    """Send C{request} byte for byte on a fresh connection; read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), headers, body, raw)


def http(path: bytes, method: bytes = b"GET") -> bytes:
    """A complete HTTP/1.1 request for C{path}, sent exactly as given."""
    extra = b"Content-Length: 0\r\n" if method not in (b"GET", b"HEAD") else b""
    return method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + extra + b"\r\n"


@defer.inlineCallbacks
def exchange(root: IResource, *requests: bytes) -> Generator[Any, Any, list[Response]]:
    """
    Serve C{root} on a loopback port, send each request on its own
    connection, and close the port before returning the responses.
    """
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        responses = []
        for request in requests:
            responses.append((yield threads.deferToThread(raw_request, port.getHost().port, request)))
    finally:
        yield port.stopListening()
    for response in responses:
        assert SECRET not in response.raw
    return responses


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """
    A web root, with secrets beside it that symlinks inside it point at.

    tmp/secret.txt, tmp/outside/secret2.txt and tmp/www-evil/secret.txt
    hold SECRET; tmp/www is the root.
    """
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret2.txt").write_bytes(SECRET)
    (tmp_path / "www-evil").mkdir()  # shares the root's name as a prefix
    (tmp_path / "www-evil" / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"<h1>home</h1>")
    files = {
        "app.js": b"console.log(1)", "mod.mjs": b"export {}", "lib.wasm": b"\0asm\1\0\0\0",
        "style.css": b"body{}", "pic.svg": b"<svg/>", "data.json": b"{}", "blob.qqq": b"??",
    }
    for name, content in files.items():
        (root / name).write_bytes(content)
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>")
    (root / "sub").mkdir()
    (root / "sub" / "file.txt").write_bytes(b"plain file")
    os.symlink("../../secret.txt", root / "sub" / "escape.txt")
    os.symlink("../secret.txt", root / "link-out.txt")
    os.symlink("../outside", root / "link-out-dir")
    os.symlink("../www-evil", root / "link-prefix")
    os.symlink(str(tmp_path / "secret.txt"), root / "link-abs.txt")
    os.symlink("app.js", root / "link-in.txt")
    os.symlink("docs", root / "link-in-dir")
    return root


@pytest_twisted.inlineCallbacks
def test_index_served_for_root(www: Path) -> Generator[Any, Any, None]:
    """GET / and GET /docs/ answer with the directory's index.html."""
    home, docs = yield exchange(build_web_root(str(www)), http(b"/"), http(b"/docs/"))
    assert (home.status, home.body) == (200, b"<h1>home</h1>")
    assert home.headers["content-type"] == "text/html"
    assert (docs.status, docs.body) == (200, b"<h1>docs</h1>")


@pytest.mark.parametrize("name, content_type", [
    ("index.html", "text/html"),
    ("app.js", "text/javascript"),
    ("mod.mjs", "text/javascript"),
    ("lib.wasm", "application/wasm"),
    ("style.css", "text/css"),
    ("pic.svg", "image/svg+xml"),
    ("data.json", "application/json"),
    ("blob.qqq", "application/octet-stream"),
])
@pytest_twisted.inlineCallbacks
def test_content_types(www: Path, name: str, content_type: str) -> Generator[Any, Any, None]:
    """Each file comes with its content type (octet-stream when unknown) and nosniff."""
    (response,) = yield exchange(build_web_root(str(www)), http(b"/" + name.encode()))
    assert response.status == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.body == (www / name).read_bytes()


@pytest_twisted.inlineCallbacks
def test_head_has_no_body(www: Path) -> Generator[Any, Any, None]:
    """HEAD gives GET's status and headers without a body, for files and for 404s."""
    found, missing = yield exchange(build_web_root(str(www)), http(b"/app.js", b"HEAD"),
                                    http(b"/nope.js", b"HEAD"))
    assert found.status == 200
    assert found.headers["content-length"] == str(len(b"console.log(1)"))
    assert found.headers["content-type"] == "text/javascript"
    assert found.body == b""
    assert missing.status == 404
    assert missing.body == b""


@pytest_twisted.inlineCallbacks
def test_missing_file_is_404(www: Path) -> Generator[Any, Any, None]:
    """A file that does not exist, or a path below a file, is 404."""
    responses = yield exchange(build_web_root(str(www)), http(b"/nope.html"), http(b"/app.js/x"),
                               http(b"/docs/nope/deeper"))
    assert [r.status for r in responses] == [404, 404, 404]


@pytest_twisted.inlineCallbacks
def test_no_listing_by_default(www: Path) -> Generator[Any, Any, None]:
    """A directory without index.html is 404, with or without its slash, and names none of its files."""
    responses = yield exchange(build_web_root(str(www)), http(b"/sub/"), http(b"/sub"), http(b"/sub/?x=1"))
    for response in responses:
        assert response.status == 404
        assert b"file.txt" not in response.body
        assert "location" not in response.headers


@pytest_twisted.inlineCallbacks
def test_listing_when_enabled(www: Path) -> Generator[Any, Any, None]:
    """With listing on, a directory without index.html is listed, without symlinks leading outside."""
    listing, redirect, inner = yield exchange(build_web_root(str(www), listing=True), http(b"/sub/"),
                                              http(b"/sub"), http(b"/sub/file.txt"))
    assert listing.status == 200
    assert b"file.txt" in listing.body
    assert b"escape.txt" not in listing.body
    assert redirect.status == 302  # twisted.web's redirect to the slashed directory
    assert redirect.headers["location"].endswith("/sub/")
    assert (inner.status, inner.body) == (200, b"plain file")


@pytest_twisted.inlineCallbacks
def test_symlinks_inside_root_are_followed(www: Path) -> Generator[Any, Any, None]:
    """A symlink to a file or directory inside the root is served like its target."""
    file, directory = yield exchange(build_web_root(str(www)), http(b"/link-in.txt"), http(b"/link-in-dir/"))
    assert (file.status, file.body) == (200, b"console.log(1)")
    assert (directory.status, directory.body) == (200, b"<h1>docs</h1>")


TRAVERSALS = [
    b"/../secret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/..%2fsecret.txt",
    b"/%2e%2e%2fsecret.txt",
    b"/%2f%2e%2e%2fsecret.txt",
    b"/sub/../../secret.txt",
    b"/sub/%2e%2e/%2e%2e/secret.txt",
    b"/docs/..%2f..%2fsecret.txt",
    b"/index.html/../../secret.txt",
    b"/./../secret.txt",
    b"/%2e%2e/%2e%2e/etc/passwd",
    b"/" + b"%2e%2e/" * 12 + b"etc/passwd",
    b"//etc/passwd",
    b"/%2fetc%2fpasswd",
    b"/%2Fetc/passwd",
    b"/..\\secret.txt",
    b"/%5c..%5csecret.txt",
    b"/..%5c..%5csecret.txt",
    b"/%c0%ae%c0%ae/secret.txt",
    b"/link-out.txt",
    b"/link-abs.txt",
    b"/link-out-dir/secret2.txt",
    b"/link-out-dir/",
    b"/link-out-dir",
    b"/link-prefix/secret.txt",
    b"/sub/escape.txt",
    b"/index.html%00",
    b"/secret.txt%00.html",
    b"/%00/../secret.txt",
    b"/\x00",
    b"../secret.txt",
    b"http://127.0.0.1/../secret.txt",
]


@pytest.mark.parametrize("listing", [False, True])
@pytest.mark.parametrize("path", TRAVERSALS)
@pytest_twisted.inlineCallbacks
def test_nothing_outside_root_is_served(www: Path, path: bytes, listing: bool) -> Generator[Any, Any, None]:
    """
    Dot-dot, encoded slashes and dots, backslashes, NULs and outward symlinks all give 404 (a raw NUL in the
    request line: 400 from the HTTP parser).
    """
    (response,) = yield exchange(build_web_root(str(www), listing=listing), http(path))
    assert response.status == (400 if b"\x00" in path else 404)
    assert PASSWD_MARK not in response.raw
    # exchange() has already checked that SECRET appears in no response.


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
@pytest_twisted.inlineCallbacks
def test_other_methods_are_405(www: Path, method: bytes) -> Generator[Any, Any, None]:
    """Any method but GET and HEAD is 405 with Allow: GET, HEAD, on files, directories and missing paths."""
    responses = yield exchange(build_web_root(str(www), listing=True), http(b"/", method),
                               http(b"/app.js", method), http(b"/sub/", method), http(b"/nope", method))
    for response in responses:
        assert response.status == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert b"console.log" not in response.body


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    """build_web_root refuses a missing directory or a plain file at once."""
    (tmp_path / "file").write_bytes(b"x")
    for bad in (tmp_path / "missing", tmp_path / "file"):
        with pytest.raises(ValueError, match="not a directory"):
            build_web_root(str(bad))


def test_children_keep_root_and_listing(www: Path) -> None:
    """Children made by createSimilarFile keep the root they must stay inside and the listing setting."""
    root = build_web_root(str(www), listing=True)
    child = root.createSimilarFile(str(www / "sub"))
    assert (child.root, child.listing) == (os.path.realpath(www), True)
    grandchild = child.createSimilarFile(str(www / "sub" / "file.txt"))
    assert (grandchild.root, grandchild.listing) == (os.path.realpath(www), True)


@pytest_twisted.inlineCallbacks
def test_mounted_root_refuses_other_methods(www: Path) -> Generator[Any, Any, None]:
    """Mounted below a path, the web root itself also answers 405 to methods twisted.web does not know."""
    parent = Resource()
    parent.putChild(b"static", build_web_root(str(www)))
    put, get = yield exchange(parent, http(b"/static", b"PUT"), http(b"/static/app.js"))
    assert (put.status, put.headers["allow"]) == (405, "GET, HEAD")
    assert (get.status, get.body) == (200, b"console.log(1)")
