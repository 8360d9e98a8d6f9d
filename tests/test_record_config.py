"""
Configuration of recording (router-wide and per route) and of the replay
target: parsing, validation with key paths, and the command-line options.
"""

from __future__ import annotations

import pytest

from wsrouter import recording
from wsrouter.cli.tap import Options
from wsrouter.config import (
    RECORDING_FORMATS,
    ConfigError,
    Recording,
    ReplayTarget,
    Route,
    build_config,
    parse_route,
    parse_target,
    route_from_string,
)

ECHO = {"path": "/", "target": "echo:"}


def test_formats_agree_with_recording_module() -> None:
    """The config's formats are the ones the recorder can write (the config cannot import it)."""
    assert tuple(recording.FORMATS) == RECORDING_FORMATS


def test_recording_off_by_default() -> None:
    """Without a [recording] table nothing is recorded, in JSON Lines, without a size limit."""
    config = build_config({"routes": [ECHO]})
    assert config.recording == Recording()
    assert (config.recording.directory, config.recording.format, config.recording.max_bytes) == (None, "jsonl", None)
    assert config.recording_directory(config.routes[0]) is None


def test_recording_keys() -> None:
    """directory, format, max_bytes and redact fill the router-wide Recording; header names are lower-cased."""
    config = build_config({
        "routes": [ECHO],
        "recording": {"directory": "rec", "format": "asciicast", "max_bytes": 4096, "redact": ["Cookie", "X-Token"]},
    })
    assert config.recording == Recording("rec", "asciicast", 4096, ("cookie", "x-token"))


@pytest.mark.parametrize("route, expected", [
    ("/r=echo:", "global"),
    ("/r[record=own]=echo:", "own"),
    ("/r[record=off]=echo:", None),
    ("/r[record=./off]=echo:", "./off"),
])
def test_route_directory_overrides_global(route: str, expected: str | None) -> None:
    """A route's own directory wins over the router's, and record=off turns recording off for it."""
    config = build_config({"routes": [route_from_string(route)], "recording": {"directory": "global"}})
    assert config.recording_directory(config.routes[0]) == expected


def test_global_off_and_route_directory() -> None:
    """directory = "off" router-wide records nothing, except routes naming a directory."""
    config = build_config({"routes": [route_from_string("/a=echo:"), route_from_string("/b[record=b]=echo:")],
                           "recording": {"directory": "off"}})
    assert [config.recording_directory(route) for route in config.routes] == [None, "b"]


def test_route_table_record() -> None:
    """A route given as a table takes a record key too."""
    config = build_config({"routes": [{"path": "/t", "target": "echo:", "record": "dir"}]})
    assert config.routes[0].record == "dir"


def test_recording_errors_collected_with_keys() -> None:
    """Every bad recording key is reported with its key path, together with the other problems."""
    with pytest.raises(ConfigError) as caught:
        build_config({
            "routes": [route_from_string("/r[record=]=echo:"), {"path": "/t", "target": "echo:", "record": 5}],
            "recording": {"directory": "", "format": "mp4", "max_bytes": "0", "redact": ""},
        })
    keys = [key for key, _ in caught.value.problems]
    assert keys == [
        "recording.directory", "recording.format", "recording.max_bytes", "recording.redact",
        "routes[0].record", "routes[1].record"]
    assert "must be a directory (or off)" in dict(caught.value.problems)["routes[0].record"]


def test_recording_validates_format() -> None:
    """Recording refuses a format the recorder cannot write, even when built directly."""
    with pytest.raises(ValueError):
        Recording(format="mp4")


@pytest.mark.parametrize("text, expected", [
    ("replay:rec.jsonl", ReplayTarget("rec.jsonl")),
    ("replay:/var/rec/a.cast", ReplayTarget("/var/rec/a.cast")),
    ("replay:rec.jsonl?speed=2", ReplayTarget("rec.jsonl", 2.0)),
    ("replay:rec.jsonl?speed=0.5", ReplayTarget("rec.jsonl", 0.5)),
    ("replay:what?.jsonl", ReplayTarget("what?.jsonl")),
])
def test_parse_replay_target(text: str, expected: ReplayTarget) -> None:
    """replay:FILE with an optional final ?speed=FACTOR; any other ? belongs to the file name."""
    assert parse_target(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("replay:", "needs a recording file"),
    ("replay:?speed=2", "needs a recording file"),
    ("replay:a.jsonl?speed=0", "greater than 0"),
    ("replay:a.jsonl?speed=-1", "greater than 0"),
    ("replay:a.jsonl?speed=fast", "greater than 0"),
    ("replay:a.jsonl?speed=inf", "greater than 0"),
])
def test_parse_replay_target_errors(text: str, fragment: str) -> None:
    """A replay target without a file or with a speed that is not a positive number is refused."""
    with pytest.raises(ValueError) as caught:
        parse_target(text)
    assert fragment in str(caught.value)


def test_unknown_target_lists_replay() -> None:
    """The unknown-target message lists the replay form."""
    with pytest.raises(ValueError) as caught:
        parse_target("nonsense")
    assert "replay:FILE[?speed=FACTOR]" in str(caught.value)


@pytest.mark.parametrize("target, text", [
    (ReplayTarget("rec.jsonl"), "replay:rec.jsonl"),
    (ReplayTarget("rec.jsonl", 2.0), "replay:rec.jsonl?speed=2"),
])
def test_replay_describe_round_trips(target: ReplayTarget, text: str) -> None:
    """describe() gives the target string back, and it parses to the same target."""
    assert target.describe() == text
    assert parse_target(text) == target


def test_replay_route_with_options() -> None:
    """A replay route takes route options and a speed together."""
    route = parse_route("/demo[record=off]=replay:demo.jsonl?speed=4")
    assert route == Route("/demo", ReplayTarget("demo.jsonl", 4.0), record="off")


def test_cli_record_options() -> None:
    """--record, --record-format and --record-max-bytes reach the configuration."""
    options = Options()
    options.parseOptions(["--route", "/=echo:", "--record", "rec", "--record-format", "asciicast",
                          "--record-max-bytes", "1000"])
    assert options["config"].recording == Recording("rec", "asciicast", 1000)


def test_cli_record_errors() -> None:
    """Bad recording options are reported at once, with their keys."""
    from twisted.python.usage import UsageError

    options = Options()
    with pytest.raises(UsageError) as caught:
        options.parseOptions(["--route", "/=echo:", "--record-format", "gif", "--record-max-bytes", "lots"])
    assert "recording.format" in str(caught.value) and "recording.max_bytes" in str(caught.value)
