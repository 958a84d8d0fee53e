"""Server-side TLS for listeners: the SSL context from ``[listener.tls]``, the handshake (done in the
connection's own greenlet so a failed one is one refused connection, logged and counted, not a traceback)
and the client certificate's revocation checks.

Every listener (mqtt, mqtt-ws, http) terminates TLS through one :class:`TlsTerminator`."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any

import gevent

from .revocation import RevocationChecker, RevocationRefused

__all__ = [
    "NO_PEER",
    "PeerCertificate",
    "TlsRefused",
    "TlsTerminator",
    "handshake",
    "peer_certificate",
    "server_context",
]


class TlsRefused(Exception):
    """The TLS handshake failed: no certificate, an untrusted, expired or revoked one, a protocol error, a
    timeout."""


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The verified client certificate: DER bytes, identity (subject CN, else the first SAN) and SANs."""

    der: bytes | None = None
    identity: str | None = None
    sans: tuple[str, ...] = ()


NO_PEER = PeerCertificate()


def server_context(tls: Any) -> ssl.SSLContext:
    """TLS 1.2+ with the listener's certificate; with ``client_ca_file`` clients must present a certificate
    issued by that CA (mTLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    # Revocation (OCSP and every CRL source, crl_file included) is checked after the handshake by
    # RevocationChecker, not by OpenSSL: one path for all sources, a renewed crl_file is picked up without
    # a restart, and verify_depth reaches above the leaf.
    return ctx


def handshake(ctx: ssl.SSLContext, sock: socket.socket, timeout: float) -> ssl.SSLSocket:
    tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        with gevent.Timeout(timeout):
            tls.do_handshake()
    except gevent.Timeout:
        tls.close()
        raise TlsRefused(f"no TLS handshake within {timeout}s") from None
    except ssl.SSLCertVerificationError as exc:
        tls.close()
        raise TlsRefused(f"client certificate refused: {exc.verify_message}") from None  # e.g. revoked
    except (ssl.SSLError, OSError) as exc:
        tls.close()
        raise TlsRefused(getattr(exc, "reason", None) or str(exc)) from None
    return tls


def peer_certificate(tls: ssl.SSLSocket) -> PeerCertificate:
    """The client certificate of a finished handshake; NO_PEER without one."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        return NO_PEER
    info: dict[str, Any] = tls.getpeercert() or {}
    sans = tuple(str(value) for _kind, value in info.get("subjectAltName", ()))
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return PeerCertificate(der, str(value), sans)
    return PeerCertificate(der, sans[0] if sans else None, sans)


class TlsTerminator:
    """TLS termination of one listener: handshake, then the revocation checks ``verify`` asks for."""

    def __init__(self, tls: Any) -> None:
        self.settings = tls
        self.context = server_context(tls)
        self.revocation = RevocationChecker(tls) if tls.verify and tls.client_ca_file else None

    def accept(self, sock: socket.socket, timeout: float) -> tuple[ssl.SSLSocket, PeerCertificate]:
        """The TLS socket and its client certificate, or TlsRefused (the socket is closed then)."""
        tls = handshake(self.context, sock, timeout)
        peer = peer_certificate(tls)
        if self.revocation is not None:
            if peer.der is None:  # cannot happen with CERT_REQUIRED; refuse rather than assume
                tls.close()
                raise TlsRefused("no client certificate to check for revocation")
            try:
                self.revocation.check(peer.der)
            except RevocationRefused as exc:
                tls.close()
                raise TlsRefused(str(exc)) from None
            except BaseException:
                tls.close()
                raise
        return tls, peer
