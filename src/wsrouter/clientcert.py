"""
Client-certificate names: matching a verified certificate's subject
against an C{[auth.NAME]} table's C{client_cert_names}, and the CGI
variables an exec target sees.

The subject arrives as the RFC 4514 string L{wsrouter.tls.client_subject}
makes (C{CN=alice,O=Example}: most specific attribute first).  A name in
C{client_cert_names} is one of:

  - a full subject (it contains C{=}): C{"CN=alice,O=Example"}; it
    matches a subject with exactly these attributes in this order
    (compared parsed, so escaping does not matter; no space after the
    commas; C{"CN=alice"} does not match C{"CN=alice,O=Example"});
  - a common name: C{"alice"}, compared exactly with the subject's CN;
  - a wildcard common name: C{"*.ops.example"} matches a CN with one or
    more labels before C{.ops.example} (case-insensitive, as host names).

A subject with no CN, or more than one, matches only full-subject names.
Pure functions on strings: tested with plain pytest.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID


def _parse(subject: str) -> x509.Name | None:
    try:
        return x509.Name.from_rfc4514_string(subject)
    except ValueError:
        return None


def name_problem(name: str) -> str | None:
    """What is wrong with one C{client_cert_names} entry, or C{None}."""
    if not name.strip():
        return "must not be empty"
    if "=" in name:
        if _parse(name) is None:
            return f"{name!r} is not an RFC 4514 subject (like CN=alice,O=Example)"
        return None
    if "*" in name and (not name.startswith("*.") or "*" in name[2:] or len(name) < 3):
        return f"{name!r}: a wildcard is a leading '*.' (like *.ops.example)"
    return None


def common_name(subject: str | None) -> str | None:
    """The subject's single CN, or C{None} (no subject, no CN, more than one, or unparsable)."""
    parsed = _parse(subject) if subject else None
    if parsed is None:
        return None
    names = parsed.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None


def matching_name(names: Sequence[str], subject: str | None) -> str | None:
    """The first of C{names} that C{subject} matches (see the module's rules), or C{None}."""
    if not subject:
        return None
    parsed = _parse(subject)
    if parsed is None:
        return None
    cn = common_name(subject)
    for name in names:
        if "=" in name:
            wanted = _parse(name)
            if wanted is not None and wanted == parsed:
                return name
        elif cn is None:
            continue
        elif name.startswith("*."):
            suffix = name[1:].lower()
            if cn.lower().endswith(suffix) and len(cn) > len(suffix) and not cn.startswith("."):
                return name
        elif name == cn:
            return name
    return None


def cgi_variables(subject: str | None) -> dict[str, str]:
    """
    The variables Apache's mod_ssl and nginx give a CGI program for a
    verified client certificate: C{SSL_CLIENT_S_DN} (RFC 4514),
    C{SSL_CLIENT_S_DN_CN} (when it has one CN) and C{SSL_CLIENT_VERIFY};
    empty without a certificate.
    """
    if not subject:
        return {}
    variables = {"SSL_CLIENT_S_DN": subject, "SSL_CLIENT_VERIFY": "SUCCESS"}
    cn = common_name(subject)
    if cn is not None:
        variables["SSL_CLIENT_S_DN_CN"] = cn
    return variables
