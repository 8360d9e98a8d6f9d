"""
Tests for L{wsrouter.routing}: which route serves a handshake, with which
subprotocol, and which HTTP status refuses it.
"""

from __future__ import annotations

import pytest

from wsrouter.config import parse_route
from wsrouter.routing import NoRoute, choose_subprotocol, path_matches, select_route


def routes(*texts: str) -> list:
    """Parse route strings; each gets its own echo target so matches are told apart by describe()."""
    return [parse_route(f"{text}=echo:") for text in texts]


def chosen(table: list, path: str, offered: list[str] | None = None) -> str:
    """The describe() of the route select_route picks for C{path}."""
    return select_route(table, path, offered or []).route.describe()


def refusal(table: list, path: str, offered: list[str]) -> NoRoute:
    """The NoRoute that select_route raises for C{path}."""
    with pytest.raises(NoRoute) as caught:
        select_route(table, path, offered)
    return caught.value


# -- paths ---------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, -1], ids=["exact-first", "prefix-first"])
def test_exact_beats_prefix(order: int) -> None:
    """An exact route wins over a prefix route for the same path, whatever their order in the table."""
    table = routes("/a/*", "/a")[::order]
    assert chosen(table, "/a") == "/a"
    assert chosen(table, "/a/b") == "/a/*"


@pytest.mark.parametrize("order", [1, -1], ids=["short-first", "long-first"])
@pytest.mark.parametrize("path, expected", [
    ("/a/b/c", "/a/b/*"),
    ("/a/b", "/a/b/*"),
    ("/a/bc", "/a/*"),
    ("/a/x/y", "/a/*"),
    ("/a", "/a/*"),
    ("/z", "/*"),
    ("/", "/*"),
])
def test_longest_prefix_wins(path: str, expected: str, order: int) -> None:
    """Among prefix routes the longest one that matches wins, whatever their order in the table."""
    table = routes("/*", "/a/*", "/a/b/*")[::order]
    assert chosen(table, path) == expected


@pytest.mark.parametrize("path", ["/", "/anything", "/a/b/c", "//", "/ünïcode"])
def test_catch_all(path: str) -> None:
    """The route /* serves every path."""
    assert chosen(routes("/*"), path) == "/*"


@pytest.mark.parametrize("path, matches", [
    ("/a", True),
    ("/a/", True),
    ("/a/b", True),
    ("/a/b/c", True),
    ("/ab", False),
    ("/abc/d", False),
    ("/", False),
    ("/b/a", False),
    ("", False),
])
def test_prefix_matches_whole_segments(path: str, matches: bool) -> None:
    """A prefix route /a/* serves /a and paths below /a/, not /ab."""
    assert path_matches(parse_route("/a/*=echo:"), path) is matches


@pytest.mark.parametrize("path, matches", [("/a", True), ("/a/", False), ("/a/b", False), ("/ab", False)])
def test_exact_matches_only_itself(path: str, matches: bool) -> None:
    """An exact route serves its own path only."""
    assert path_matches(parse_route("/a=echo:"), path) is matches


@pytest.mark.parametrize("table", [[], routes("/a"), routes("/a/*", "/b")])
@pytest.mark.parametrize("path", ["/ab", "/c/d"])
def test_not_found(table: list, path: str) -> None:
    """A path no route serves is refused with 404 and a reason naming the path."""
    error = refusal(table, path, ["binary"])
    assert error.status == 404
    assert path in error.reason
    assert str(error) == error.reason


# -- subprotocols --------------------------------------------------------------


@pytest.mark.parametrize("offered, expected", [
    (["c", "a"], "c"),
    (["a", "c"], "a"),
    (["zz", "b", "a"], "b"),
    (["b"], "b"),
])
def test_subprotocol_in_client_order(offered: list[str], expected: str) -> None:
    """A route naming subprotocols takes the first one the client offered, in the client's order."""
    match = select_route(routes("/x@a,b,c"), "/x", offered)
    assert (match.subprotocol, match.base64) == (expected, False)


@pytest.mark.parametrize("offered, shown", [(["other"], "other"), ([], "none"), (["x", "y"], "x, y")])
def test_constrained_route_refuses_other_subprotocols(offered: list[str], shown: str) -> None:
    """A route naming subprotocols refuses, with 400, a client offering none of them, saying what the path speaks."""
    error = refusal(routes("/x@chat.v2,chat.v1"), "/x", offered)
    assert error.status == 400
    assert "/x" in error.reason
    assert f"offered {shown}," in error.reason
    assert "speaks chat.v1, chat.v2" in error.reason


@pytest.mark.parametrize("order", [1, -1], ids=["constrained-first", "unconstrained-first"])
@pytest.mark.parametrize("offered, route, subprotocol", [
    (["chat"], "/x@chat", "chat"),
    (["other", "chat"], "/x@chat", "chat"),
    (["other"], "/x", None),
    ([], "/x", None),
    (["binary"], "/x", "binary"),
])
def test_unconstrained_route_still_accepts(offered: list[str], route: str, subprotocol: str | None,
                                           order: int) -> None:
    """Beside a constrained route for the same path, an unconstrained one accepts clients the other refuses."""
    table = routes("/x@chat", "/x")[::order]
    match = select_route(table, "/x", offered)
    assert (match.route.describe(), match.subprotocol) == (route, subprotocol)


@pytest.mark.parametrize("offered, subprotocol, base64", [
    pytest.param(["binary"], "binary", False, id="binary"),
    pytest.param(["binary", "base64"], "binary", False, id="binary-then-base64"),
    pytest.param(["base64", "binary"], "binary", False, id="base64-then-binary"),
    pytest.param(["chat", "binary"], "binary", False, id="other-then-binary"),
    pytest.param(["base64"], "base64", True, id="base64-only"),
    pytest.param(["chat", "base64"], "base64", True, id="other-then-base64"),
    pytest.param(["chat"], None, False, id="other-only"),
    pytest.param([], None, False, id="none"),
])
def test_websockify_dialect(offered: list[str], subprotocol: str | None, base64: bool) -> None:
    """An unconstrained route picks binary when offered, base64 only without binary, else no subprotocol."""
    assert choose_subprotocol(parse_route("/x=echo:"), offered) == (subprotocol, base64)
    match = select_route(routes("/x"), "/x", offered)
    assert (match.subprotocol, match.base64) == (subprotocol, base64)


@pytest.mark.parametrize("offered, subprotocol, base64", [
    (["base64"], "base64", True),
    (["base64", "binary"], "base64", True),
    (["binary", "base64"], "binary", False),
])
def test_constrained_base64_route(offered: list[str], subprotocol: str, base64: bool) -> None:
    """A route naming base64 and binary follows the client's order, and sets the base64 flag only for base64."""
    assert choose_subprotocol(parse_route("/x@binary,base64=echo:"), offered) == (subprotocol, base64)


def test_choose_subprotocol_refusal() -> None:
    """choose_subprotocol says None when a constrained route gets none of its subprotocols."""
    assert choose_subprotocol(parse_route("/x@chat=echo:"), ["binary", "base64"]) is None
