"""
Loading the C{[auth.NAME]} tables' files, and checking a Basic password
against its htpasswd hash (L{wsrouter.htpasswd}) off the event loop.

The decisions themselves are L{wsrouter.policy.authenticate}'s; this
module reads the htpasswd and token files (at start and on reload) and
runs the hash check (bcrypt takes tens of milliseconds on purpose) in the
reactor's thread pool so the loop keeps serving other connections.
Passwords that were accepted are remembered (as a keyed digest, never
the password) for a while, so a client reconnecting is not charged the
hash again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import bcrypt
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from wsrouter import htpasswd
from wsrouter.config import Auth, RouterConfig
from wsrouter.policy import (
    Accepted,
    Credentials,
    PasswordCheck,
    Refusal,
    authenticate,
    htpasswd_weak_lines,
    parse_htpasswd,
    parse_tokens,
)

_log = Logger(namespace="wsrouter")

#: How many accepted passwords are remembered, and for how long (seconds).
REMEMBERED = 1024
REMEMBER_FOR = 300.0


class AuthFileError(ValueError):
    """An htpasswd or token file cannot be used; C{key} is its key path."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _read(key: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise AuthFileError(key, f"cannot read {path!r}: {getattr(e, 'strerror', None) or e}") from None


def load_credentials(auth: Auth) -> Credentials:
    """
    C{auth}'s files read and checked.

    @raise AuthFileError: a file is missing, unreadable, has a refused hash
        (DES crypt, plain text: see L{wsrouter.htpasswd}), or (tokens) lists none.
    """
    prefix = f"auth.{auth.name}"
    users: dict[str, str] = {}
    if auth.htpasswd is not None:
        try:
            users.update(parse_htpasswd(_read(f"{prefix}.htpasswd", auth.htpasswd)))
        except ValueError as e:
            if isinstance(e, AuthFileError):
                raise
            raise AuthFileError(f"{prefix}.htpasswd", f"{auth.htpasswd}: {e}") from None
    users.update(parse_htpasswd("\n".join(auth.users)))
    tokens: tuple[bytes, ...] = ()
    if auth.tokens is not None:
        tokens = parse_tokens(_read(f"{prefix}.tokens", auth.tokens))
        if not tokens:
            raise AuthFileError(f"{prefix}.tokens", f"{auth.tokens!r} lists no token")
    return Credentials(auth.realm, users, tokens, auth.forward_user_header, auth.forward_from,
                       auth.client_cert_names)


def load_all(config: RouterConfig) -> dict[str, Credentials]:
    """Every C{[auth.NAME]} of C{config}, loaded; L{AuthFileError} for the first that cannot be."""
    return {auth.name: load_credentials(auth) for auth in config.auth}


def weak_hashes(config: RouterConfig) -> Iterator[str]:
    """
    A warning for each accepted but weak htpasswd line ({SHA}, apr1) of
    C{config}, naming the file and line, never the hash.
    """
    for auth in config.auth:
        sources = [(f"auth.{auth.name}.users", "\n".join(auth.users))]
        if auth.htpasswd is not None:
            with contextlib.suppress(AuthFileError):  # load_credentials has already said so
                sources.insert(0, (f"auth.{auth.name}.htpasswd {auth.htpasswd}", _read("", auth.htpasswd)))
        for where, text in sources:
            for number, user, kind in htpasswd_weak_lines(text):
                yield (f"{where}: line {number}: user {user!r} has a weak {kind} hash, "
                       f"cracked quickly if the file leaks; replace it with `htpasswd -B`")


def auth_problems(config: RouterConfig) -> Iterator[tuple[str, str]]:
    """Each C{[auth.NAME]} whose files cannot be used, as C{(key path, problem)} (for the start-up checks)."""
    for auth in config.auth:
        try:
            load_credentials(auth)
        except AuthFileError as e:
            yield e.key, e.problem


class PasswordChecker:
    """
    Checks Basic passwords against htpasswd hashes in the reactor's thread
    pool, remembering accepted ones for L{REMEMBER_FOR} seconds.
    """

    def __init__(self, reactor: Any):
        self._reactor = reactor
        self._key = secrets.token_bytes(32)
        self._accepted: OrderedDict[bytes, float] = OrderedDict()

    def check(self, attempt: PasswordCheck) -> Deferred[bool]:
        """Fires with whether C{attempt}'s password matches its hash (never fails)."""
        digest = hmac.new(self._key, attempt.hashed + b"\0" + attempt.password, hashlib.sha256).digest()
        now = self._reactor.seconds()
        until = self._accepted.get(digest)
        if until is not None and until > now:
            return succeed(True)
        checking: Deferred[bool] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), htpasswd.matches, attempt.password,
            attempt.hashed.decode("ascii", "replace"))
        return checking.addCallback(self._remember, digest)

    def _remember(self, matches: bool, digest: bytes) -> bool:
        if matches:
            self._accepted[digest] = self._reactor.seconds() + REMEMBER_FOR
            self._accepted.move_to_end(digest)
            while len(self._accepted) > REMEMBERED:
                self._accepted.popitem(last=False)
        return matches


def hash_password(password: str) -> str:
    """A bcrypt hash of C{password} (websockify's C{--auth-source user:pass} is stored only hashed)."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode("ascii")


__all__ = [
    "AuthFileError",
    "Authenticator",
    "NotAuthorized",
    "PasswordChecker",
    "auth_problems",
    "hash_password",
    "load_all",
    "load_credentials",
    "weak_hashes",
]


class NotAuthorized(Exception):
    """Credentials missing or wrong: the reason (no secret in it) and the 401's challenge headers."""

    def __init__(self, reason: str, challenge: list[tuple[str, str]], status: int = 401):
        super().__init__(reason)
        self.reason = reason
        self.challenge = challenge
        #: 401, or 403 when no credentials could help (client certificates only).
        self.status = status


class Authenticator:
    """
    Decides who connects for each C{[auth.NAME]}: L{wsrouter.policy.authenticate},
    then the hash check off the loop.  Weak hashes are logged as warnings
    at start and on each reload.
    """

    def __init__(self, config: RouterConfig, reactor: Any):
        self.credentials = load_all(config)
        self.passwords = PasswordChecker(reactor)
        self._warn(config)

    def use_config(self, config: RouterConfig) -> None:
        """Read the files of C{config}'s C{[auth.NAME]} tables anew (a reload)."""
        self.credentials = load_all(config)
        self._warn(config)

    @staticmethod
    def _warn(config: RouterConfig) -> None:
        for warning in weak_hashes(config):
            _log.warn("{warning}", warning=warning)

    def check(self, name: str, headers: Mapping[str, str], peer: str,
              client_cert: str | None = None) -> Deferred[Accepted]:
        """
        Fires with who connects, or fails with L{NotAuthorized}.

        @param headers: the request headers, names lower case.
        @param peer: the client's address (for forward auth's trusted proxies).
        @param client_cert: the subject of the client's verified certificate.
        """
        credentials = self.credentials[name]
        decided = authenticate(credentials, headers, peer, client_cert)
        if isinstance(decided, Accepted):
            return succeed(decided)
        if isinstance(decided, Refusal):
            return fail(NotAuthorized(decided.reason, credentials.challenge(), decided.status))
        attempt = decided

        def judged(matches: bool) -> Accepted:
            if not attempt.known:
                raise NotAuthorized(f"unknown user {attempt.user!r}", credentials.challenge())
            if not matches:
                raise NotAuthorized(f"wrong password for user {attempt.user!r}", credentials.challenge())
            return Accepted(attempt.user, "basic")

        return self.passwords.check(attempt).addCallback(judged)
