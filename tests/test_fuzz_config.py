"""
Property tests of the configuration (L{wsrouter.config}): any nested data,
any file content and any route string give a configuration or a
L{ConfigError} listing problems, never another exception; a configuration
survives L{to_data} and back.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from fuzz.checks import check_config_data, check_config_file, check_route_string
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import budget
from wsrouter.config import ConfigError, build_config, spec

#: Values that are valid somewhere, so a generated config gets past the first check now and then.
PLAUSIBLE = st.sampled_from([
    "tcp://127.0.0.1:5900", "echo:", "/", "/x", "/a/b/", "line", "binary", "fixed:4", "separator:%00", "same",
    "off", "https://*.example.com", "tcp:0:interface=127.0.0.1", "127.0.0.1:80", "udp://127.0.0.1:9",
    "unix:/tmp/x.sock", "exec:cat", "wss://127.0.0.1:1/", "jsonl", "asciicast", "respawn", "ignore", "v1", "v2",
    "127.0.0.0/8", "default", "refuse", "debug", "*.example.com", "exec", "1.2", "TLSv1.2", "",
])
scalars = (PLAUSIBLE | st.text(max_size=20) | st.integers(min_value=-2, max_value=70000)
           | st.floats(allow_nan=True, allow_infinity=True) | st.booleans())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8) | PLAUSIBLE, inner, max_size=3), max_leaves=6)


def table(keys: tuple[str, ...], value: st.SearchStrategy[Any] = values) -> st.SearchStrategy[dict[str, Any]]:
    """A table with some of C{keys} (now and then a misspelt one), each with any value."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), value, max_size=4)


route = table(spec.ROUTE_KEYS, PLAUSIBLE | values)
TABLES = {
    "limits": spec.LIMITS_KEYS, "lifetime": spec.LIFETIME_KEYS, "log": spec.LOG_KEYS, "web": spec.WEB_KEYS,
    "recording": spec.RECORDING_KEYS, "security": spec.SECURITY_KEYS, "tls": spec.TLS_KEYS,
    "compression": spec.COMPRESSION_KEYS,
}
top_value = {key: table(keys) for key, keys in TABLES.items()}
top_value["routes"] = st.lists(route, max_size=3)
top_value["programs"] = st.dictionaries(st.text(max_size=5), table(spec.PROGRAM_KEYS), max_size=2)
top_value["auth"] = st.dictionaries(st.text(max_size=5), table(spec.AUTH_KEYS), max_size=2)
anything = st.fixed_dictionaries({}, optional={key: top_value.get(key, values) for key in spec.TOP_KEYS})
# Near-valid: real routes and in-range numbers, so the later checks (and to_data) are reached too.
TARGETS = ["echo:", "tcp://127.0.0.1:5900", "udp://127.0.0.1:9", "exec:cat", "ws://127.0.0.1:1/x", "tcp://[::1]:1"]
good_route = st.fixed_dictionaries(
    {"path": st.sampled_from(["/", "/x", "/a/b/"]), "target": st.sampled_from(TARGETS)},
    optional={"framing": st.sampled_from(["line", "binary", "fixed:3", "separator:%00", "nope"]),
              "subprotocols": st.lists(st.sampled_from(["a", "b", "binary", ""]), max_size=2),
              "max_forks": st.integers(min_value=-1, max_value=5), "host": st.sampled_from(["a.example", "*.b", ""]),
              "origin": st.sampled_from(["same", "off", ["https://x.example"], []])})
numbers = st.integers(min_value=-1, max_value=100000) | st.floats(min_value=-1, max_value=1e6)
near_valid = st.fixed_dictionaries(
    {"routes": st.lists(good_route, min_size=1, max_size=3)},
    optional={"limits": table(spec.LIMITS_KEYS, numbers),
              "compression": table(spec.COMPRESSION_KEYS, st.booleans() | st.integers(min_value=7, max_value=16)),
              "trusted_proxies": st.lists(st.sampled_from(["127.0.0.1", "10.0.0.0/8", "::1", "x", True, 1])),
              "listen": st.lists(st.sampled_from(["tcp:0:interface=127.0.0.1", "127.0.0.1:0", "nope:"]), max_size=2),
              "unknown_host": st.sampled_from(["default", "refuse", "x"]),
              "workers": st.integers(min_value=-1, max_value=4)})
configs = anything | near_valid


@budget(100)
@given(raw=configs)
@example(raw={"routes": [{"path": "/", "target": "echo:"}]})
@example(raw={"routes": [{"path": "/", "target": "ws://127.0.0.1:1/x", "framing": "line"}]})  # was KeyError
def test_any_nested_data_gives_a_config_or_config_error(raw: dict[str, Any]) -> None:
    """Nested data built from the schema's keys gives a config (which round-trips) or a ConfigError."""
    check_config_data(raw)


def test_framing_on_a_websocket_target_is_a_config_error() -> None:
    """Finding: framing on a ws:// route raised KeyError (no kind name for it) instead of a ConfigError."""
    with pytest.raises(ConfigError, match=r"routes\[0\]\.framing: is only for stream targets .* not ws/wss"):
        build_config({"routes": [{"path": "/", "target": "ws://127.0.0.1:1/x", "framing": "line"}]})


def test_a_boolean_trusted_proxy_is_refused_without_asking_ipaddress() -> None:
    """Finding: C{trusted_proxies = [true]} reached ipaddress, which reads True as 0.0.0.1 (with a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match=r"trusted_proxies\[0\]"):
            build_config({"routes": [{"path": "/", "target": "echo:"}], "trusted_proxies": [True]})


@budget(60)
@given(text=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@example(text=b"\xff\xfe")
@example(text=b'routes = [{path = "/", target = "echo:"}]\n[limits]\nmax_message_size = -1\n')
def test_any_file_gives_a_config_or_config_error(text: bytes) -> None:
    """Any bytes as the TOML file give a config or a ConfigError that names the file."""
    check_config_file(text)


route_text = st.builds("{}{}{}={}".format, st.sampled_from(["/", "/x", "", "x", "/a[b", "/[framing=line]"]),
                       st.sampled_from(["", "[framing=line;max-forks=2]", "[env=A:b]", "[nope=1]", "[record=x;]"]),
                       st.sampled_from(["", "@p", "@a,b,,", "@"]), PLAUSIBLE | st.text(max_size=20))


@budget(300)
@given(text=route_text | st.text(max_size=60))
@example(text="/=")
@example(text="/[max-forks=٣]=exec:cat")
def test_any_route_string_gives_a_route_or_config_error(text: str) -> None:
    """Any route string gives a Route or a ConfigError."""
    check_route_string(text)
