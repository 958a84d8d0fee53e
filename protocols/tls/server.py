"""Server-side TLS for listeners: the SSL context from ``[listener.tls]`` and the handshake, done in the
connection's own greenlet so a failed one is one refused connection (logged, counted), not a traceback."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import gevent

__all__ = ["TlsRefused", "handshake", "peer_identity", "server_context"]


class TlsRefused(Exception):
    """The TLS handshake failed: no certificate, an untrusted or expired one, a protocol error, a timeout."""


def server_context(tls: Any) -> ssl.SSLContext:
    """TLS 1.2+ with the listener's certificate; with ``client_ca_file`` clients must present a certificate
    issued by that CA (mTLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if "crl" in tls.verify and tls.crl_file:
        # OpenSSL checks the CRL's signature against the CA and its validity window (an expired CRL fails
        # every handshake: fail closed), then the client certificate's serial against it.
        ctx.load_verify_locations(tls.crl_file)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
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


def peer_identity(tls: ssl.SSLSocket) -> tuple[bytes | None, str | None]:
    """(the client certificate in DER, its identity: subject CN, else the first SAN); None without one."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        return None, None
    info: dict[str, Any] = tls.getpeercert() or {}
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return der, str(value)
    for _kind, value in info.get("subjectAltName", ()):
        return der, str(value)
    return der, None
