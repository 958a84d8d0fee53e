"""Revocation checks of a verified client certificate chain, run right after the TLS handshake.

The chain is the leaf plus its issuers from ``client_ca_file``; the first ``verify_depth`` certificates
from the leaf upward are checked (a self-issued root is never checked: nobody above it can revoke it).
Every check named in ``verify`` must pass for every one of them. A definite "revoked" or "unknown" is
always refused; when no valid answer can be had (responder down, bad signature, stale, ...) the
connection is refused too unless ``revocation_fail_open`` is set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from loguru import logger

from .chain import IssuerStore, describe, is_self_issued
from .crl import CrlChecker
from .ocsp import OcspChecker
from .status import NotGood, StatusUnavailable

__all__ = ["RevocationChecker", "RevocationRefused"]

CHAIN_CACHE = 10_000  # leaves whose chain is kept


class RevocationRefused(Exception):
    """The client certificate chain did not pass the revocation checks; the message says why."""


class _Check(Protocol):
    def check(self, cert: x509.Certificate, issuer: x509.Certificate, role: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Link:
    """One certificate to check, with its issuer (None: not in client_ca_file) and its name in messages."""

    cert: x509.Certificate
    issuer: x509.Certificate | None
    role: str


def _links(chain: list[x509.Certificate], depth: int) -> tuple[_Link, ...]:
    """The first ``depth`` certificates of ``chain`` to check, up to a self-issued root (never checked) or
    the first whose issuer is not in client_ca_file (which ends the list)."""
    links: list[_Link] = []
    for level in range(min(depth, len(chain))):
        cert = chain[level]
        if is_self_issued(cert):
            break
        role = "client certificate" if level == 0 else f"CA certificate {describe(cert)!r}"
        issuer = chain[level + 1] if level + 1 < len(chain) else None
        links.append(_Link(cert, issuer, role))
        if issuer is None:
            break
    return tuple(links)


class RevocationChecker:
    """The revocation checks of one listener's ``[listener.tls]`` (its caches live as long as it does)."""

    def __init__(self, tls: Any) -> None:
        self.depth: int = tls.verify_depth
        self.fail_open: bool = tls.revocation_fail_open
        self.issuers = IssuerStore.from_file(tls.client_ca_file)
        # Building a chain verifies signatures: reconnecting devices reuse theirs (keyed by the leaf's DER),
        # already cut to the certificates to check.
        self._chains: dict[bytes, tuple[_Link, ...]] = {}
        self.ocsp = OcspChecker(tls.ocsp_responder_url, tls.revocation_timeout, tls.ocsp_nonce)
        self.crl = CrlChecker(tls.crl_file, tls.crl_url, tls.revocation_timeout)
        checks: dict[str, _Check] = {"ocsp": self.ocsp, "crl": self.crl}
        self.checks: list[tuple[str, _Check]] = [(name, checks[name]) for name in tls.verify]

    def check(self, der: bytes) -> None:
        """Returns when the chain passes; raises RevocationRefused with the reason otherwise."""
        links = self._chains.get(der)
        if links is None:
            try:
                leaf = x509.load_der_x509_certificate(der)
            except ValueError as exc:
                raise RevocationRefused(f"client certificate unreadable: {exc}") from None
            links = _links(self.issuers.chain(leaf), self.depth)
            if len(self._chains) >= CHAIN_CACHE:
                del self._chains[next(iter(self._chains))]
            self._chains[der] = links
        for level, link in enumerate(links):
            if link.issuer is None:
                self._unavailable(f"the issuer of {describe(link.cert)!r} is not in client_ca_file")
                break
            for name, check in self.checks:
                try:
                    check.check(link.cert, link.issuer, link.role)
                except NotGood as exc:
                    raise RevocationRefused(str(exc)) from None
                except StatusUnavailable as exc:
                    self._unavailable(f"{link.role}: {exc}" if level else str(exc), name)

    def _unavailable(self, reason: str, check: str = "") -> None:
        if not self.fail_open:
            raise RevocationRefused(reason)
        logger.warning(
            "revocation status unknown, accepted (revocation_fail_open{}): {}",
            f", {check}" if check else "",
            reason,
        )
