"""
Write the seed corpus (fuzz/corpus/NAME/*) from known-good inputs:

    python fuzz/seeds.py

The targets read their input through atheris' FuzzedDataProvider, whose
first bytes pick options (a surface, a size, cut points); each seed starts
with zero bytes for those, so the known-good input follows (and is
consumed by the provider's ConsumeBytes as it is).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "src")]

from fuzz.checks import Frame, Message, compress_message, encode_frame, message_frames  # noqa: E402
from wsrouter.proxyproto import build_header  # noqa: E402
from wsrouter.recording import Event, Header, encode_asciicast_header, encode_jsonl_event, encode_jsonl_header  # noqa: E402


def parser_seeds() -> dict[str, bytes]:
    mask = b"\x01\x02\x03\x04"
    text = b"".join(encode_frame(f) for f in message_frames(Message(False, "héllo".encode(), (2,), (0,)), mask))
    big = encode_frame(Frame(2, b"x" * 300, length_form=1)) + encode_frame(Frame(8, b"\x03\xe8bye"))
    compressed = encode_frame(Frame(1, compress_message(b"hello hello hello"), rsv1=True))
    return {"text-fragmented": text, "binary-then-close": big, "compressed": compressed,
            "ping-pong": encode_frame(Frame(9, b"p")) + encode_frame(Frame(10, b"q"))}


def framing_seeds() -> dict[str, bytes]:
    return {"lines": b"one\r\ntwo\nthree\r\r\n", "nul-records": b"a\0b\0\0c", "crlfcrlf": b"h\r\n\r\nbody\r\n\r\n"}


def config_seeds() -> dict[str, bytes]:
    example = (HERE.parent / "examples" / "wsrouter.toml").read_bytes()
    minimal = b'listen = ["127.0.0.1:0"]\n[[routes]]\npath = "/"\ntarget = "echo:"\n'
    return {"example": example, "minimal": minimal,
            "tables": b'[limits]\nmax_message_size = 10\n[[routes]]\npath = "/x"\ntarget = "tcp://127.0.0.1:1"\n'
                      b'framing = "line"\n[compression]\npermessage_deflate = true\n'}


def handshake_seeds() -> dict[str, bytes]:
    v1 = build_header("v1", ("10.0.0.1", 1234), ("10.0.0.2", 80))
    v2 = build_header("v2", ("::1", 1234), ("::2", 443))
    head = b"GET /x HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    # surface byte first (0: PROXY header, 1: request head)
    return {"proxy-v1": b"\x00" + v1, "proxy-v2": b"\x00" + v2, "request": b"\x01\x00\x00" + head}


def recording_seeds() -> dict[str, bytes]:
    header = Header("jsonl", 1, 1.5, session_id="s", route="/x", peer="127.0.0.1:1", headers=(("host", "a"),))
    events = [Event(0.1, "client", "text", b"hi"), Event(0.2, "target", "binary", b"\x00\xff"),
              Event(0.3, None, "note", b"note"), Event(0.4, None, "close", code=1000, reason="bye")]
    jsonl = encode_jsonl_header(header) + b"".join(encode_jsonl_event(e) for e in events)
    cast = encode_asciicast_header(Header("asciicast", 2, 1.5, width=80, height=24)) + b'[0.5, "o", "hi"]\n'
    return {"jsonl": jsonl, "asciicast": cast}


# atheris' FuzzedDataProvider takes integers and list picks from the END of the input, and bytes,
# booleans and text from the front (text after a byte choosing its width: 1 = ASCII/UTF-8). So the
# seeds below are the known-good input followed by the choices, last choice first.


def proxy_seeds() -> dict[str, bytes]:
    v1 = build_header("v1", ("10.0.0.1", 1234), ("10.0.0.2", 80))
    v2 = build_header("v2", ("::1", 1234), ("::2", 443))
    unknown = b"PROXY UNKNOWN\r\n"
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    # header: start b"" (pick 0), surface 0; stream: start b"" (pick 0), no cuts (0), surface 2
    return {"header-v1": v1 + b"\x00\x00", "header-v2": v2 + b"\x00\x00",
            "stream-v1": v1 + request + b"\x00\x00\x02", "stream-v2": v2 + request + b"\x00\x00\x02",
            "stream-unknown": unknown + request + b"\x00\x00\x02"}


def resolvers_seeds() -> dict[str, bytes]:
    lines = b"a: 127.0.0.1:5900\nb: unix_socket:/run/x.sock\n# comment\nc:[::1]:22\nd 1.2.3.4:80\n"
    # the token file text (ASCII) and surface 2; HOST:PORT text (not a listed piece) and surface 3
    return {"token-file": b"\x01" + lines + b"\x02", "host-port": b"\x00\x01[::1]:5900\x03",
            "unix-socket": b"\x00\x01unix_socket:/run/a:b.sock\x03"}


def main() -> None:
    for name, seeds in [("parser", parser_seeds()), ("framing", framing_seeds()), ("config", config_seeds()),
                        ("handshake", handshake_seeds()), ("recording", recording_seeds())]:
        directory = HERE / "corpus" / name
        directory.mkdir(parents=True, exist_ok=True)
        for seed, data in seeds.items():
            prefix = b"" if name in ("recording", "handshake") else b"\x00" * 4
            (directory / seed).write_bytes(prefix + data if name != "config" else b"\x00" + data)
    for name, seeds in [("proxy", proxy_seeds()), ("resolvers", resolvers_seeds())]:
        directory = HERE / "corpus" / name
        directory.mkdir(parents=True, exist_ok=True)
        for seed, data in seeds.items():
            (directory / seed).write_bytes(data)


if __name__ == "__main__":
    main()
