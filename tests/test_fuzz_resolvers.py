"""
Property tests of the token resolvers (L{wsrouter.resolvers}): whatever a
client sends, the token is read or not read, never an exception; a
template's values never leave their place; a token file of any text gives
targets or skipped lines; the token never survives redaction.
"""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import budget
from wsrouter.config import Route, TcpTarget, UnixTarget
from wsrouter.config.model import ResolverTarget
from wsrouter.resolvers.base import Refuse, ResolveRequest, redact_token, split_target, token_of
from wsrouter.resolvers.template import TemplateResolver
from wsrouter.resolvers.tokenfile import parse_token_lines

ROUTE = Route(path="/vnc", prefix=True, target=ResolverTarget("vnc"))
#: Client text: printable and not, separators and path pieces.
client_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40) | st.sampled_from(
    ["", "..", "/", "a/b", "a:1", "%2F", "\0", "x\n", "[::1]", "host:22", "tok en", "-", "_"])


def request(query: list[tuple[str, str]], cookies: dict[str, str], path_info: str, host: str) -> ResolveRequest:
    return ResolveRequest(path="/vnc" + path_info, route=ROUTE, path_info=path_info, query=tuple(query),
                          cookies=cookies, host=host)


@budget(300)
@given(st.lists(st.tuples(st.sampled_from(["token", "t", "n"]) | client_text, client_text), max_size=4),
       st.dictionaries(st.sampled_from(["token", "x"]), client_text, max_size=2), client_text, client_text,
       st.booleans())
def test_any_request_gives_a_token_or_none(query, cookies, path_info, host, host_token) -> None:
    """The token comes from the Host, the query, the cookie or one path segment, as sent, or is None."""
    made = request(query, cookies, path_info, host)
    token = token_of(made, host_token)
    assert token is None or (isinstance(token, str) and token)
    if token is not None and not host_token and made.query_value("token") is None and "token" not in cookies:
        assert "/" not in token  # from the path: one segment only


@budget(400)
@given(st.sampled_from(["tcp://10.0.0.{query.n}:5900", "unix:///run/vnc/{query.token}.sock",
                        "tcp://{query.host}.internal:5900", "unix:///run/{path}.sock"]), client_text)
def test_template_values_stay_in_their_place(pattern: str, value: str) -> None:
    """Any value gives a 400 or a target whose host and path are the pattern with a plain value in its place."""
    resolver = TemplateResolver(type("Settings", (), {"source": pattern})())
    made = request([("n", value), ("token", value), ("host", value)], {}, "/" + quote(value, safe=""), "")
    try:
        target = resolver.resolve(made)
    except Refuse as e:
        assert e.status == 400
        return
    if isinstance(target, TcpTarget):
        assert target.port == 5900
        assert target.host.endswith(".internal") or target.host.startswith("10.0.0.")
        assert "/" not in target.host and ":" not in target.host
    else:
        assert isinstance(target, UnixTarget)
        assert target.path.startswith("/run/") and target.path.endswith(".sock")
        assert ".." not in target.path and target.path.count("/") == pattern.count("/") - 2


@budget(300)
@given(st.lists(client_text | st.sampled_from(["a: 127.0.0.1:5900", "b: unix_socket:/run/x.sock", "# c",
                                               "c:[::1]:22", "d 1.2.3.4:80"]), max_size=6))
def test_any_token_file_gives_targets_or_skipped_lines(lines: list[str]) -> None:
    """A token file of any text maps tokens to TCP or Unix targets; other lines are skipped, not raised."""
    targets = parse_token_lines("\n".join(lines), "fuzz")
    assert all(isinstance(t, TcpTarget | UnixTarget) for t in targets.values())


@budget(300)
@given(client_text)
def test_split_target_answers_a_target_or_value_error(text: str) -> None:
    """websockify's HOST:PORT text is a target or a ValueError saying why."""
    try:
        target = split_target(text)
    except ValueError:
        return
    assert isinstance(target, TcpTarget | UnixTarget)


@budget(300)
@given(client_text.filter(lambda t: t.strip() != "" and t not in ("REDACTED", "/")), client_text)
def test_a_token_never_survives_redaction(token: str, other: str) -> None:
    """After redaction, no path segment and no token value equals the token."""
    path = "/vnc/" + quote(token, safe="")
    query = "token=" + quote(token, safe="") + "&o=" + quote(other, safe="")
    shown_path, shown_query = redact_token(path, query, token)
    assert quote(token, safe="") not in shown_path.split("/")
    assert "token=REDACTED" in shown_query
