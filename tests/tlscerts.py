"""
Certificates for the TLS tests, made with the openssl command: a test CA,
server certificates it signs (for 127.0.0.1 and localhost, or another
name), and a self-signed one no CA vouches for.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
from pathlib import Path

import attrs
import pytest

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command (tests/setup/system-deps.sh)")

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@attrs.frozen
class Pair:
    """A certificate file, its key file, and the two in one file (websockify's --cert)."""

    cert: Path
    key: Path
    combined: Path

    def fingerprint(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        return hashlib.sha256(der).hexdigest()


def make_ca(directory: Path) -> Pair:
    """A CA certificate (CN wsrouter-test-ca)."""
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=wsrouter-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return _pair(directory, "ca")


def make_server(directory: Path, name: str, ca: Pair | None, alt: str = "DNS:localhost,IP:127.0.0.1",
                usage: str = "serverAuth") -> Pair:
    """A server certificate with CN C{name} and these subject alternative names, signed by C{ca} (else self-signed)."""
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n")
    if ca is None:
        _openssl("req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                 "-subj", f"/CN={name}", "-addext", f"subjectAltName={alt}", cwd=directory)
    else:
        _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", str(extensions), cwd=directory)
    return _pair(directory, name)


def _pair(directory: Path, name: str) -> Pair:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    combined = directory / f"{name}-combined.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    return Pair(cert, key, combined)


def make_client(directory: Path, name: str, ca: Pair | None) -> Pair:
    """A client certificate with CN C{name}, signed by C{ca} (else self-signed)."""
    return make_server(directory, name, ca, alt=f"DNS:{name}.clients.test", usage="clientAuth")


def client_context(ca: Pair, maximum: ssl.TLSVersion | None = None, cert: Pair | None = None) -> ssl.SSLContext:
    """A client context trusting only C{ca} (optionally capped at a TLS version, presenting C{cert})."""
    context = ssl.create_default_context(cafile=str(ca.cert))
    if maximum is not None:
        context.maximum_version = maximum
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context
