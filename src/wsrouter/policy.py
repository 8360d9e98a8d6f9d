"""
Who may connect: the pure decisions behind the handshake's refusals.

Fed plain data (header values, addresses, a clock reading), never a
request or a reactor, so every rule is tested with plain pytest.  The
gateway calls these and turns a L{Refusal} into the HTTP answer.

  - L{ClientCounts}: sessions in total and per client address, and a
    handshake rate per client address (a token bucket per address).
  - L{origin_problem}: the route's origin policy (C{same}, C{off}, or a
    list of trusted origins with C{*.} wildcards).
  - L{authenticate}: forward auth from trusted proxies, bearer tokens
    (compared in constant time) and HTTP Basic against htpasswd hashes (the
    slow hash check itself is left to the caller, off the event loop).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from attrs import frozen

from wsrouter import htpasswd
from wsrouter.clientcert import matching_name

#: The origin policies that are words; any other policy is a list of origins.
ORIGIN_SAME = "same"
ORIGIN_OFF = "off"
ORIGIN_WORDS = (ORIGIN_SAME, ORIGIN_OFF)

#: The window of L{ClientCounts}' handshake rate: C{max_handshakes_per_client} per this many seconds.
HANDSHAKE_WINDOW = 60.0
#: Idle per-client entries are forgotten past this many addresses (bounds the table).
_PRUNE_ABOVE = 4096

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@frozen
class Refusal:
    """
    Why a handshake is refused: the HTTP status and a one-line reason.

    @ivar retry_after: seconds the client should wait (for 429 and 503), or C{None}.
    """

    status: int
    reason: str
    retry_after: int | None = None


# -- counts per client -------------------------------------------------------------


class ClientCounts:
    """
    Sessions open (including those still in their handshake), in total and
    per client address, and a handshake rate per address.

    A handshake is admitted by L{admit}, which counts it; every admitted
    handshake is later given back with exactly one L{release}, when the
    handshake fails or the session it became ends.

    @param max_connections: sessions at once, all clients together (503 beyond).
    @param max_per_client: sessions at once from one address (429 beyond).
    @param max_handshakes: handshakes one address may start per
        L{HANDSHAKE_WINDOW} seconds, as a burst or spread out (429 beyond).
    """

    def __init__(self, max_connections: int, max_per_client: int, max_handshakes: int):
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.max_handshakes = max_handshakes
        self.total = 0
        self.open: dict[str, int] = {}
        # address -> (tokens left, time of that reading)
        self._buckets: dict[str, tuple[float, float]] = {}

    def set_limits(self, max_connections: int, max_per_client: int, max_handshakes: int) -> None:
        """New limits for the next handshakes; the counts go on (a reload)."""
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.max_handshakes = max_handshakes

    def admit(self, client: str, now: float) -> Refusal | None:
        """
        Count one more handshake from C{client} at time C{now} (seconds),
        or say why not (and count nothing).
        """
        if self.total >= self.max_connections:
            return Refusal(503, f"too many connections ({self.max_connections} open)", retry_after=5)
        if self.open.get(client, 0) >= self.max_per_client:
            return Refusal(429, f"too many connections from {client} ({self.max_per_client} open)",
                           retry_after=5)
        tokens = self._tokens(client, now)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) / self._rate())
            return Refusal(429, f"too many handshakes from {client} "
                                f"(more than {self.max_handshakes} per {HANDSHAKE_WINDOW:g} s)",
                           retry_after=max(1, wait))
        self._buckets[client] = (tokens - 1.0, now)
        self.total += 1
        self.open[client] = self.open.get(client, 0) + 1
        if len(self._buckets) > _PRUNE_ABOVE:
            self._prune(now)
        return None

    def release(self, client: str) -> None:
        """One admitted handshake from C{client} has failed, or its session has ended."""
        left = self.open.get(client, 0) - 1
        if left > 0:
            self.open[client] = left
        else:
            self.open.pop(client, None)
        self.total = max(0, self.total - 1)

    def _rate(self) -> float:
        return self.max_handshakes / HANDSHAKE_WINDOW

    def _tokens(self, client: str, now: float) -> float:
        capacity = float(self.max_handshakes)
        if client not in self._buckets:
            return capacity
        tokens, then = self._buckets[client]
        return min(capacity, tokens + max(0.0, now - then) * self._rate())

    def _prune(self, now: float) -> None:
        """Forget addresses with no open session whose bucket has refilled: they are as if new."""
        full = [client for client in self._buckets
                if client not in self.open and self._tokens(client, now) >= self.max_handshakes]
        for client in full:
            del self._buckets[client]


# -- origin --------------------------------------------------------------------------


def origin_policy_problem(policy: object) -> str | None:
    """What is wrong with C{policy} as an origin policy, or C{None}."""
    if policy in ORIGIN_WORDS:
        return None
    if isinstance(policy, str):
        return f"must be {ORIGIN_SAME!r}, {ORIGIN_OFF!r} or a list of origins, not {policy!r}"
    if not isinstance(policy, tuple) or not policy:
        return f"must be {ORIGIN_SAME!r}, {ORIGIN_OFF!r} or a non-empty list of origins, not {policy!r}"
    for pattern in policy:
        problem = origin_pattern_problem(pattern)
        if problem:
            return problem
    return None


def origin_pattern_problem(pattern: object) -> str | None:
    """What is wrong with one trusted origin (C{https://*.b.example[:PORT]}), or C{None}."""
    if not isinstance(pattern, str):
        return f"an origin must be a string, not {pattern!r}"
    parsed = _split_origin(pattern.replace("*.", "wildcard.", 1) if pattern.count("*") == 1 else pattern)
    if parsed is None or ("*" in pattern and not _host_part(pattern).startswith("*.")):
        return (f"an origin must be SCHEME://HOST[:PORT] (a leading '*.' in HOST matches its subdomains), "
                f"not {pattern!r}")
    return None


def _host_part(origin: str) -> str:
    return origin.partition("://")[2]


def _split_origin(origin: str) -> tuple[str, str, int] | None:
    """C{(scheme, host, port)} of an origin, host lower case, default port filled in; C{None} if not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _split_host(host_header: str, secure: bool) -> tuple[str, int] | None:
    """C{(host, port)} of a Host header, the scheme's default port filled in."""
    parsed = _split_origin(("https://" if secure else "http://") + host_header.strip())
    return None if parsed is None else (parsed[1], parsed[2])


def origin_problem(policy: str | Sequence[str], origin: str | None, host_header: str | None,
                   secure: bool) -> str | None:
    """
    Why C{origin} may not open a WebSocket here, or C{None} if it may.

    @param policy: C{same}, C{off}, or trusted origins (C{https://*.b.example}
        matches the subdomains of b.example on port 443).
    @param origin: the request's Origin header; C{None} (no header: not a
        browser) is always allowed.
    @param host_header: the request's Host header, for C{same}.
    @param secure: the connection is TLS (so the origin must be https for C{same}).
    """
    if origin is None or policy == ORIGIN_OFF:
        return None
    parsed = _split_origin(origin)
    if parsed is None:
        return "the Origin header is not a web origin"
    if policy == ORIGIN_SAME:
        host = _split_host(host_header or "", secure)
        if host is None:
            return "the request has no valid Host header to compare the Origin with"
        expected = ("https" if secure else "http", *host)
        if parsed != expected:
            return f"origin is not this site ({expected[0]}://{_shown(host_header or '')})"
        return None
    for pattern in policy:
        if _origin_matches(pattern, parsed):
            return None
    return "origin is not in the route's trusted origins"


def _shown(text: str, limit: int = 64) -> str:
    """Client text as a reason quotes it: as it is when short and printable, else escaped and cut."""
    return text if len(text) <= limit and text.isprintable() else ascii(text[:limit])


def _origin_matches(pattern: str, origin: tuple[str, str, int]) -> bool:
    wildcard = _host_part(pattern).startswith("*.")
    wanted = _split_origin(pattern.replace("*.", "wildcard.", 1) if wildcard else pattern)
    if wanted is None:
        return False
    scheme, host, port = wanted
    if (scheme, port) != (origin[0], origin[2]):
        return False
    if wildcard:
        suffix = host[len("wildcard"):]
        return origin[1].endswith(suffix) and len(origin[1]) > len(suffix)
    return host == origin[1]


# -- credentials -----------------------------------------------------------------------

def htpasswd_line_problem(line: str) -> str | None:
    """What is wrong with one C{user:hash} line, or C{None} (see L{wsrouter.htpasswd} for the hashes accepted)."""
    user, sep, hashed = line.partition(":")
    if not sep or not user:
        return "must be user:hash"
    if htpasswd.scheme(hashed) is None:
        return f"user {user!r}: {htpasswd.refusal(hashed)}"
    return None


def htpasswd_weak_lines(text: str) -> list[tuple[int, str, str]]:
    """The accepted but weak lines of an htpasswd file, as C{(line number, user, scheme)} (never the hash)."""
    weak = []
    for number, raw in enumerate(text.splitlines(), 1):
        user, _, hashed = raw.strip().partition(":")
        kind = htpasswd.scheme(hashed)
        if kind in htpasswd.WEAK and not user.startswith("#"):
            weak.append((number, user, kind or ""))
    return weak


def parse_htpasswd(text: str) -> dict[str, str]:
    """
    The users and hashes of an htpasswd file (blank lines and C{#} comments skipped).

    @raise ValueError: naming the line and the problem (never the hash).
    """
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        problem = htpasswd_line_problem(line)
        if problem:
            raise ValueError(f"line {number}: {problem}")
        user, _, hashed = line.partition(":")
        users[user] = hashed
    return users


def parse_tokens(text: str) -> tuple[bytes, ...]:
    """The bearer tokens of a token file: one per line, blank lines and C{#} comments skipped."""
    lines = (line.strip() for line in text.splitlines())
    return tuple(line.encode("utf-8") for line in lines if line and not line.startswith("#"))


def network_problem(text: str) -> str | None:
    """What is wrong with a proxy address or network (C{10.0.0.1}, C{10.0.0.0/8}), or C{None}."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"must be an IP address or network, not {text!r}"
    return None


def address_in(address: str, networks: Sequence[str]) -> bool:
    """C{address} is in one of C{networks} (a Unix socket's peer, C{unix}, is in none)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network, strict=False) for network in networks)


def token_known(token: bytes, tokens: Sequence[bytes]) -> bool:
    """
    C{token} is one of C{tokens}, compared in constant time: every token is
    compared (digests of equal length), whatever matches first.
    """
    wanted = hashlib.sha256(token).digest()
    found = False
    for known in tokens:
        found |= hmac.compare_digest(wanted, hashlib.sha256(known).digest())
    return found


#: Checked against for unknown users of an empty table (a bcrypt hash of nothing useful).
UNKNOWN_USER_HASH = htpasswd.DECOYS[htpasswd.BCRYPT].encode("ascii")


@frozen
class PasswordCheck:
    """
    A Basic user's password still to be checked against its hash
    (slow: the caller runs it off the loop).

    @ivar known: C{False} for a user not in the file: the check runs all
        the same (against a decoy hash of the scheme of the table's first
        user, so an unknown user takes as long as a known one), and must
        then refuse.
    """

    user: str
    password: bytes
    hashed: bytes
    known: bool = True


@frozen
class Accepted:
    """Who connects, and how that was established (C{basic}, C{token}, C{forward})."""

    user: str
    method: str


@frozen
class Credentials:
    """
    What one C{[auth.NAME]} accepts, loaded: users with their password
    hashes, bearer tokens, and the forward-auth header with its proxies.
    """

    realm: str
    users: Mapping[str, str]
    tokens: tuple[bytes, ...]
    forward_header: str | None
    forward_from: tuple[str, ...]
    #: C{client_cert_names} (see L{wsrouter.clientcert}).
    cert_names: tuple[str, ...] = ()

    def challenge(self) -> list[tuple[str, str]]:
        """The C{WWW-Authenticate} headers a 401 carries: one per method a client can answer."""
        realm = self.realm.replace('"', "")
        headers = []
        if self.users:
            headers.append(("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"'))
        if self.tokens:
            headers.append(("WWW-Authenticate", f'Bearer realm="{realm}"'))
        return headers


def authenticate(credentials: Credentials, headers: Mapping[str, str], peer: str,
                 client_cert: str | None = None) -> Accepted | PasswordCheck | Refusal:
    """
    Decide who connects from the request's C{headers} (names lower case),
    the C{peer} address and the subject of the client's verified
    certificate.  A refusal's reason names the method and the user, never
    a password or token.

    A client certificate whose name is listed is considered first; then
    forward auth (a request from a trusted proxy carrying the header),
    then a bearer token, then HTTP Basic.  A table naming only
    certificates refuses with 403 (no challenge could help).
    """
    if credentials.cert_names:
        if matching_name(credentials.cert_names, client_cert) is not None:
            return Accepted(client_cert or "", "client-cert")
        if not credentials.challenge() and credentials.forward_header is None:
            if client_cert is None:
                return Refusal(403, "a verified client certificate is required")
            return Refusal(403, f"client certificate {client_cert!r} is not among the accepted names")
    if credentials.forward_header is not None:
        forwarded = headers.get(credentials.forward_header.lower())
        if forwarded is not None:
            if address_in(peer, credentials.forward_from):
                return Accepted(forwarded, "forward")
            return Refusal(401, f"{credentials.forward_header} from {peer}, which is not a trusted proxy")
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and credentials.tokens:
        if token_known(value.strip().encode("utf-8"), credentials.tokens):
            return Accepted("token", "token")
        return Refusal(401, "unknown bearer token")
    if scheme == "basic" and credentials.users:
        return _basic(credentials, value.strip())
    if authorization:
        return Refusal(401, f"credentials of an unaccepted kind ({_scheme_name(scheme)})")
    return Refusal(401, "credentials required")


#: The IANA HTTP authentication schemes: only these are named in a refusal.  A
#: header without a scheme may be the bare secret itself, which is never quoted.
_SCHEMES = ("basic", "bearer", "concealed", "digest", "dpop", "gnap", "hoba", "mutual", "negotiate", "ntlm",
            "privatetoken", "scram-sha-1", "scram-sha-256", "vapid")


def _scheme_name(scheme: str) -> str:
    if not scheme:
        return "none"
    return scheme if scheme in _SCHEMES else "an unknown scheme"


def _basic(credentials: Credentials, value: str) -> PasswordCheck | Refusal:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return Refusal(401, "malformed Basic credentials")
    user, sep, password = decoded.partition(":")
    if not sep:
        return Refusal(401, "malformed Basic credentials")
    hashed = credentials.users.get(user)
    if hashed is None:
        first = next(iter(credentials.users.values()), "")
        decoy = htpasswd.decoy_for(first).encode("ascii")
        return PasswordCheck(user, password.encode("utf-8"), decoy, known=False)
    return PasswordCheck(user, password.encode("utf-8"), hashed.encode("ascii"))
