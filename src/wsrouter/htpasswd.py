"""
The hashes of htpasswd files: which are accepted, which are weak, and
checking a password against one.

Accepted: bcrypt (C{htpasswd -B}: C{$2y$}, C{$2b$}, C{$2a$}), crypt
SHA-256 and SHA-512 (C{-2}, C{-5}: C{$5$}, C{$6$}), and, with a start-up
warning, Apache MD5 (C{-m}: C{$apr1$}) and unsalted SHA-1 (C{-s}:
C{{SHA}}).  Refused: DES crypt (C{-d}, 8 characters at most) and plain
text (C{-p}).  bcrypt is checked with the C{bcrypt} library, the others
with C{libpass} (the maintained fork of passlib, imported as
C{passlib}); both compare in constant time.  L{matches} is slow on
purpose: callers run it off the event loop.
"""

from __future__ import annotations

import re

import bcrypt
from passlib.hash import apr_md5_crypt, ldap_sha1, sha256_crypt, sha512_crypt

#: Scheme names, as said in messages.
BCRYPT = "bcrypt"
SHA512 = "SHA-512 crypt"
SHA256 = "SHA-256 crypt"
APR1 = "apr1 (Apache MD5)"
SHA1 = "{SHA} (unsalted SHA-1)"

_PREFIXES = (
    (("$2y$", "$2b$", "$2a$"), BCRYPT),
    (("$6$",), SHA512),
    (("$5$",), SHA256),
    (("$apr1$",), APR1),
    (("{SHA}",), SHA1),
)

#: Accepted, but a leaked file is cracked quickly: logged as a warning at start-up.
WEAK = frozenset({APR1, SHA1})

_DES = re.compile(r"[./0-9A-Za-z]{13}")

#: A hash of each scheme checked for unknown users, so that they take as long as a known user would.
DECOYS = {
    BCRYPT: "$2b$10$pSKhOwBPOOV7rvY6nPJ6XOyHvsf0SgvIQwEfiqANKw3Y/AHDtmlfW",
    SHA512: ("$6$PWysZWVJzc3YEexF$8e4pETNyMCIJ.0QlPS6yG6DWl1thUrE7Ssx7F10apra4cWRa12/cAV..nv6x5fPZ34"
             "3VhOxJASXeV7kC7RC6y1"),
    SHA256: "$5$66.IsSegcn8Ev./c$SMTrzDcFW2Xk5ZA87ctrI3rmIeczJ20FqGM5rYg2Ld3",
    APR1: "$apr1$i1ibaw7t$GQRafFFYT7xJA5jXTp1PP0",
    SHA1: "{SHA}GzY2Qb3z9grh8HRU8HgsfeBbMmk=",
}


def scheme(hashed: str) -> str | None:
    """The accepted scheme of C{hashed} (one of the names above), or C{None}."""
    for prefixes, name in _PREFIXES:
        if hashed.startswith(prefixes):
            return name
    return None


def refusal(hashed: str) -> str:
    """Why C{hashed}, of no accepted scheme, is refused (never quoting it)."""
    if _DES.fullmatch(hashed):
        kind = "DES crypt (htpasswd -d), which uses 8 characters of the password at most and is cracked in minutes"
    elif hashed.startswith("$1$"):
        kind = "MD5 crypt ($1$), a weak hash"
    elif hashed.startswith("$"):
        # Nothing of the line is quoted: it may be a password that starts with $.
        kind = "an unknown hash scheme (the line starts with '$')"
    else:
        kind = "plain text (htpasswd -p), readable by anyone who reads the file"
    return f"refused: {kind}; make a bcrypt hash with `htpasswd -B FILE USER`"


def decoy_for(hashed: str) -> str:
    """A hash of the same scheme as C{hashed}, to check an unknown user against."""
    return DECOYS.get(scheme(hashed) or BCRYPT, DECOYS[BCRYPT])


def matches(password: bytes, hashed: str) -> bool:
    """C{password} matches C{hashed} (slow, constant-time; C{False} for a malformed hash)."""
    kind = scheme(hashed)
    try:
        if kind == BCRYPT:
            # htpasswd writes $2y$, which the bcrypt library reads as $2b$ (the same algorithm).
            raw = hashed.encode("ascii")
            if raw.startswith(b"$2y$"):
                raw = b"$2b$" + raw[4:]
            return bool(bcrypt.checkpw(password, raw))
        handler = {SHA512: sha512_crypt, SHA256: sha256_crypt, APR1: apr_md5_crypt, SHA1: ldap_sha1}.get(kind or "")
        if handler is None:
            return False
        return bool(handler.verify(password, hashed))
    except (ValueError, TypeError):  # a malformed hash, or a password over bcrypt's 72 bytes
        return False
