"""
TLS contexts: the listeners' (from C{[tls]}) and the targets' (C{tls://}).

Server side, L{ServerTls} is the context factory every TLS listener
shares; a reload swaps the certificate options inside it, so handshakes
from then on use the new certificate while open sessions keep theirs.

Client side, L{client_options} gives the pyOpenSSL options for one
C{tls://} target; L{check_peer} is the check made once the handshake is
done (host name with service-identity, or the pinned fingerprint).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLContextFactory, ISSLTransport
from twisted.python.filepath import FilePath
from zope.interface import implementer

from wsrouter.config import TlsSettings, TlsTarget

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)
_MINIMUM = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsProblem(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and why."""


def _read(path: str, what: str) -> bytes:
    try:
        return FilePath(path).getContent()
    except OSError as e:
        raise TlsProblem(f"cannot read the {what} {path}: {e.strerror or e}") from None


def _certificates(data: bytes, path: str, what: str) -> list[crypto.X509]:
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise TlsProblem(f"{path}: no PEM certificate in the {what}")
    try:
        return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as e:
        raise TlsProblem(f"{path}: not a valid certificate: {ssl_reason(e)}") from None


def ssl_reason(error: BaseException | None) -> str:
    """The OpenSSL reason strings of a pyOpenSSL error, in plain words."""
    if error is None:
        return "connection lost"
    args = error.args[0] if error.args else None
    if isinstance(args, list) and args and all(isinstance(item, tuple) and len(item) == 3 for item in args):
        return "; ".join(str(item[2]) for item in args)
    return str(error) or type(error).__name__


def server_options(settings: TlsSettings) -> ssl.CertificateOptions:
    """
    The certificate options of C{settings}, checked now (files readable,
    key matching the certificate, cipher string understood) so a bad file
    stops the start or a reload instead of every handshake.

    @raise TlsProblem: naming the file and the problem.
    """
    cert_data = _read(settings.cert, "certificate file")
    chain = [certificate.to_cryptography() for certificate in
             _certificates(cert_data, settings.cert, "certificate file")]
    key_path = settings.key or settings.cert
    key_data = cert_data if settings.key is None else _read(settings.key, "key file")
    hint = " (give the key with --key or tls.key)" if settings.key is None else ""
    match = _PEM_KEY.search(key_data)
    if match is None:
        raise TlsProblem(f"{key_path}: no PEM private key{hint}")
    try:
        key = serialization.load_pem_private_key(match.group(0), password=None)
    except (ValueError, TypeError) as e:
        raise TlsProblem(f"{key_path}: not a usable private key (encrypted keys are not supported): {e}") from None
    kwargs = {}
    if settings.ciphers is not None:
        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(settings.ciphers.encode("ascii", "replace"))
        except SSL.Error:
            raise TlsProblem(f"cipher string {settings.ciphers!r} selects no cipher OpenSSL knows") from None
        kwargs["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(settings.ciphers)
    if settings.verify_client and settings.cafile is not None:
        cas = _certificates(_read(settings.cafile, "CA file"), settings.cafile, "CA file")
        kwargs["trustRoot"] = ssl.trustRootFromCertificates([ssl.Certificate(ca) for ca in cas])
    options = ssl.CertificateOptions(  # cryptography objects: pyOpenSSL's own are deprecated
        privateKey=key, certificate=chain[0], extraCertChain=chain[1:],  # type: ignore[arg-type]
        raiseMinimumTo=_MINIMUM[settings.min_version], **kwargs)
    try:
        options.getContext()
    except SSL.Error as e:
        raise TlsProblem(f"{key_path}: the key does not fit the certificate in {settings.cert}: "
                         f"{ssl_reason(e)}") from None
    return options


@implementer(IOpenSSLContextFactory)
class ServerTls:
    """
    The context factory of every TLS listener: what it hands out can be
    replaced (L{use}) while listening.

    @ivar ssl_only: whether the listeners refuse plain connections.
    """

    def __init__(self, settings: TlsSettings):
        self.use(settings)

    def use(self, settings: TlsSettings) -> None:
        """
        New handshakes use C{settings}; nothing changes if they cannot be
        loaded.

        @raise TlsProblem: the old settings stay in force.
        """
        options = server_options(settings)
        by_name = {}
        for name, cert, key in settings.hosts:
            try:
                by_name[name.lower()] = server_options(attrs.evolve(settings, cert=cert, key=key, hosts=()))
            except TlsProblem as e:
                raise TlsProblem(f"hosts.{name}: {e}") from None
        context = options.getContext()
        if by_name:
            context.set_tlsext_servername_callback(_choose_by_name(by_name))
        self._context = context
        self.settings = settings
        #: Plain connections are refused: asked for, or they would bypass client certificates.
        self.ssl_only = settings.ssl_only or settings.verify_client

    def getContext(self) -> SSL.Context:
        """The context for a new connection (Twisted's context factory interface)."""
        return self._context


def _choose_by_name(by_name: dict[str, ssl.CertificateOptions]) -> Any:
    """An SNI callback switching to the certificate of the name the client asked for (exact, then C{*.})."""

    def choose(connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        name = raw.decode("ascii", "replace").lower().rstrip(".")
        options = by_name.get(name) or by_name.get("*." + name.partition(".")[2])
        if options is not None:
            connection.set_context(options.getContext())

    return choose


def client_subject(transport: Any) -> str | None:
    """The subject of the client's verified certificate (RFC 4514), if the connection is TLS and sent one."""
    secure = ISSLTransport(transport, None)
    if secure is None:
        return None
    certificate: Any = secure.getPeerCertificate()
    if certificate is None:
        return None
    subject: str = certificate.to_cryptography().subject.rfc4514_string()
    return subject


def server_name(transport: Any) -> str | None:
    """The name the client asked for by SNI, if the connection is TLS and sent one."""
    secure = ISSLTransport(transport, None)
    handle = getattr(secure, "getHandle", None) if secure is not None else None
    if handle is None:
        return None
    raw = handle().get_servername()
    return raw.decode("ascii", "replace") if raw else None


# -- targets --------------------------------------------------------------------------------


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def client_options(target: TlsTarget) -> IOpenSSLClientConnectionCreator | ssl.CertificateOptions:
    """
    The TLS options for connecting to C{target}: verified against its CA
    file or the system's CAs, with SNI; for a pin or C{verify=false} the
    chain is not checked here (L{check_peer} checks the pin).

    @raise TlsProblem: the CA file cannot be used.
    """
    if target.pin is not None or not target.verify:
        return ssl.CertificateOptions(verify=False)
    trust: Any = ssl.platformTrust()  # an IOpenSSLTrustRoot (not exported publicly)
    if target.ca is not None:
        cas = _certificates(_read(target.ca, "CA file"), target.ca, "CA file")
        trust = ssl.trustRootFromCertificates([ssl.Certificate(ca) for ca in cas])
    return ssl.optionsForClientTLS(target.host, trustRoot=trust)


def fingerprint(certificate: crypto.X509) -> str:
    """The SHA-256 fingerprint of C{certificate}'s DER form, lower-case hex."""
    return hashlib.sha256(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)).hexdigest()


def check_peer(target: TlsTarget, connection: SSL.Connection) -> str | None:
    """
    After the handshake: why the server's certificate is not acceptable for
    C{target}, or C{None} if it is.  (The chain was checked during the
    handshake; this checks the name, or the pin.)
    """
    if not target.verify:
        return None
    peer = connection.get_peer_certificate()
    if peer is None:
        return "the server sent no certificate"
    if target.pin is not None:
        got = fingerprint(peer)
        return None if got == target.pin else f"certificate fingerprint {got} is not the pinned {target.pin}"
    try:
        if is_address(target.host):
            verify_ip_address(connection, target.host)
        else:
            verify_hostname(connection, target.host)
    except VerificationError as e:
        return f"certificate is not for {target.host}: {e}"
    return None
