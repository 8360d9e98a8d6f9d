"""
websockify's C{JWTTokenApi}: the token is a JWT whose claims name the
target, C{{"host": ..., "port": ...}}; C{source} is the key file.

Like websockify: the key file is a PEM key (RSA/EC, public to check
signatures, private to decrypt too) or else the raw bytes of a symmetric
(C{oct}) key; a signed token (JWS) and an encrypted one (JWE, whose
content is a signed token, decrypted and checked with the same key) are
both accepted; C{nbf} and C{exp} are honoured (against the reactor's
clock, no leeway).  Unlike websockify the key is read once, at start (a
missing or bad key is a start-up error, not a log line per connection).

An invalid, expired or not-yet-valid token is refused with 403 and a log
line naming the problem (never the token).  Uses jwcrypto (maintained by
Latchset, the JOSE library websockify uses).
"""

from __future__ import annotations

import json
from typing import Any

from jwcrypto import jwk, jwt
from jwcrypto.common import JWException
from twisted.logger import Logger

from wsrouter.config import Target
from wsrouter.refusal import Refuse
from wsrouter.resolvers.base import ResolveRequest, target_of_fields

log = Logger(namespace="wsrouter.resolvers")


def load_key(path: str) -> jwk.JWK:
    """
    websockify's key file: PEM, else the file's bytes as an C{oct} key.

    @raise ValueError: the file cannot be read or is neither (says which).
    """
    if not path:
        raise ValueError("no JWT key file given: set the token source to the key's file (--token-source)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the JWT key file {path}: {e.strerror}") from None
    key = jwk.JWK()
    try:
        key.import_from_pem(data)
    except (ValueError, TypeError, JWException):
        try:
            key.import_key(k=data.decode("utf-8"), kty="oct")
        except (ValueError, UnicodeDecodeError, JWException) as e:
            raise ValueError(f"JWT key file {path} is neither a PEM key nor a symmetric key: {e}") from None
    return key


class JWTTokenApi:
    """Checks (and decrypts) the token with the key, then reads host and port from its claims."""

    def __init__(self, settings: Any, reactor: Any):
        self._key = load_key(settings.source)
        self._clock = reactor

    def claims(self, token: str) -> dict[str, Any]:
        """
        The token's claims once its signature (and encryption) check out.

        @raise Refuse: 403 for a token that is malformed, forged, expired or not yet valid.
        """
        try:
            # jwcrypto 1.5+ must be told a JWE (compact form: five parts) to open one.
            kind = "JWE" if token.count(".") == 4 else "JWS"
            opened = jwt.JWT(key=self._key, jwt=token, check_claims=False, expected_type=kind)
            if "enc" in json.loads(opened.header):
                opened = jwt.JWT(key=self._key, jwt=opened.claims, check_claims=False, expected_type="JWS")
            claims = json.loads(opened.claims)
        except (JWException, ValueError, TypeError, KeyError) as e:
            log.info("JWTTokenApi: refused a token: {problem}", problem=type(e).__name__)
            raise Refuse(403, "invalid token") from None
        if not isinstance(claims, dict):
            raise Refuse(403, "invalid token")
        now = self._clock.seconds()
        if "nbf" in claims and now < _number(claims["nbf"]):
            log.info("JWTTokenApi: refused a token that is not valid yet (nbf)")
            raise Refuse(403, "token not valid yet")
        if "exp" in claims and now > _number(claims["exp"]):
            log.info("JWTTokenApi: refused an expired token (exp)")
            raise Refuse(403, "token expired")
        return claims

    def resolve(self, request: ResolveRequest) -> Target:
        if not request.token:
            raise Refuse(400, "token not present")
        claims = self.claims(request.token)
        try:
            return target_of_fields(claims, "the token")
        except ValueError as e:
            raise Refuse(403, f"token names no valid target: {e}") from None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refuse(403, "invalid token: nbf/exp must be numbers")
    return float(value)
