"""Server-side TLS for listeners: the SSL context from ``[listener.tls]``, the handshake (done in the
connection's own greenlet so a failed one is one refused connection, logged and counted, not a traceback),
session tickets and their key rotation (``tickets.py``), and the client certificate's revocation checks.

Every listener (mqtt, mqtt-ws, http) terminates TLS through one :class:`TlsTerminator`."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from loguru import logger

from .revocation import RevocationChecker, RevocationRefused
from .tickets import TICKETS_PER_HANDSHAKE, TicketKeys, scope_of

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
    issued by that CA (mTLS). ``session_tickets``: one ticket per handshake (TLS 1.2 and 1.3); off, no
    ticket and no resumption (the context keeps no session cache a client could resume from either)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.session_tickets:
        ctx.num_tickets = TICKETS_PER_HANDSHAKE
    else:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    # Revocation (OCSP and every CRL source, crl_file included) is checked after the handshake by
    # RevocationChecker, not by OpenSSL: one path for all sources, a renewed crl_file is picked up without
    # a restart, and verify_depth reaches above the leaf. It runs on resumed sessions too.
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


PEER_CACHE = 10_000  # client certificates whose identity is kept (returning devices skip the decoding)
_EXPIRED_SINCE = "client certificate expired since the session was made (resumption refused)"


def _peer_of(der: bytes, info: dict[str, Any]) -> tuple[PeerCertificate, float]:
    """The PeerCertificate of ``der`` (``info``: its ``getpeercert()`` dict) and its notAfter (epoch s)."""
    not_after = ssl.cert_time_to_seconds(info["notAfter"]) if "notAfter" in info else float("inf")
    sans = tuple(str(value) for _kind, value in info.get("subjectAltName", ()))
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return PeerCertificate(der, str(value), sans), not_after
    return PeerCertificate(der, sans[0] if sans else None, sans), not_after


def peer_certificate(tls: ssl.SSLSocket, now: float | None = None) -> PeerCertificate:
    """The client certificate of a finished handshake; NO_PEER without one. A resumed session carries the
    certificate of the handshake that made it, verified then: one that has expired since is refused
    (TlsRefused; ``now`` is the wall clock, for tests)."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        return NO_PEER
    peer, not_after = _peer_of(der, tls.getpeercert() or {})
    _refuse_if_expired(tls, not_after, now)
    return peer


def _refuse_if_expired(tls: ssl.SSLSocket, not_after: float, now: float | None = None) -> None:
    """OpenSSL verified the certificate of a resumed session when the session was made, not now."""
    if tls.session_reused and not_after < (time.time() if now is None else now):
        raise TlsRefused(_EXPIRED_SINCE)


class TlsTerminator:
    """TLS termination of one listener: handshake, then the revocation checks ``verify`` asks for.

    With ``session_tickets`` the ticket keys change every ``ticket_rotation`` seconds (``tickets.py``);
    ``ticket_secret`` and ``clock`` (wall-clock seconds) are for tests."""

    def __init__(
        self, tls: Any, ticket_secret: bytes | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self.settings = tls
        self.context = server_context(tls)
        self.revocation = RevocationChecker(tls) if tls.verify and tls.client_ca_file else None
        self._peers: dict[bytes, tuple[PeerCertificate, float]] = {}
        self.tickets: TicketKeys | None = None
        if tls.session_tickets:
            self.tickets = TicketKeys(scope_of(tls), tls.ticket_rotation, ticket_secret, clock)
            self.context = self.tickets.context(self.context, self._rebuild)

    def current_context(self) -> ssl.SSLContext:
        """The context for the next handshake (with this rotation period's ticket keys)."""
        if self.tickets is not None:
            self.context = self.tickets.context(self.context, self._rebuild)
        return self.context

    def _rebuild(self) -> ssl.SSLContext | None:
        """A fresh context (fresh random ticket keys) where keys cannot be set; None when the files fail
        to load now (the current context stays, the log says why)."""
        try:
            return server_context(self.settings)
        except (OSError, ssl.SSLError) as exc:
            logger.warning(
                "TLS session ticket keys not rotated ({} or {} unusable: {}); retrying in a minute",
                self.settings.cert_file,
                self.settings.key_file,
                exc,
            )
            return None

    def _peer(self, tls: ssl.SSLSocket) -> PeerCertificate:
        """``peer_certificate``, with the decoded certificates of returning clients kept."""
        der = tls.getpeercert(binary_form=True)
        if not der:
            return NO_PEER
        known = self._peers.get(der)
        if known is None:
            known = _peer_of(der, tls.getpeercert() or {})
            if len(self._peers) >= PEER_CACHE:
                del self._peers[next(iter(self._peers))]
            self._peers[der] = known
        _refuse_if_expired(tls, known[1])
        return known[0]

    def accept(self, sock: socket.socket, timeout: float) -> tuple[ssl.SSLSocket, PeerCertificate]:
        """The TLS socket and its client certificate, or TlsRefused (the socket is closed then)."""
        tls = handshake(self.current_context(), sock, timeout)
        try:
            peer = self._peer(tls)
        except TlsRefused:
            tls.close()
            raise
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
