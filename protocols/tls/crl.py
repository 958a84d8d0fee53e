"""CRL checks for client certificates: from ``crl_file``, else ``crl_url``, else the certificate's CRL
distribution points.

A CRL counts only when its issuer's key verifies its signature and it is inside its last_update /
next_update window: an expired CRL fails the check (it cannot tell about recent revocations). The file is
re-read whenever it changes on disk (a rotated or renewed CRL is picked up without a restart); a downloaded
CRL is kept until its next_update, and concurrent handshakes share one download."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field

from cryptography import x509

from .cache import IdentityMemo, SharedCache, utcnow
from .chain import describe, key_hash
from .fetch import FetchError, http_get
from .ocsp import SKEW
from .status import NotGood, StatusUnavailable

__all__ = ["CrlChecker", "CrlSet", "distribution_points", "parse_crls"]

NO_NEXT_UPDATE_TTL = dt.timedelta(minutes=5)  # how long a downloaded CRL without next_update is kept
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)


def parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL in ``data``: concatenated PEM blocks, or one DER CRL."""
    if data.lstrip().startswith(b"-----BEGIN"):
        crls = [x509.load_pem_x509_crl(block) for block in _PEM_CRL.findall(data)]
        if not crls:
            raise ValueError("no X509 CRL PEM block")
        return crls
    return [x509.load_der_x509_crl(data)]


def distribution_points(cert: x509.Certificate) -> list[str]:
    """The http(s) URLs of the certificate's CRL distribution points."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [
        str(name.value)
        for point in points
        for name in point.full_name or ()
        if isinstance(name, x509.UniformResourceIdentifier)
        and str(name.value).startswith(("http:", "https:"))
    ]


@dataclass
class _Entry:
    crl: x509.CertificateRevocationList
    revoked: frozenset[int]
    verified: dict[bytes, bool] = field(default_factory=dict)  # issuer key hash -> signature valid
    # read once: each property access of a CRL object parses again
    issuer: bytes = b""  # DER of the CRL's issuer name
    last_update: dt.datetime = field(default_factory=utcnow)
    next_update: dt.datetime | None = None

    @classmethod
    def of(cls, crl: x509.CertificateRevocationList) -> _Entry:
        revoked = frozenset(r.serial_number for r in crl)
        return cls(crl, revoked, {}, crl.issuer.public_bytes(), crl.last_update_utc, crl.next_update_utc)


@dataclass(frozen=True, slots=True)
class _IssuerFacts:
    subject: bytes  # DER of the subject name
    key_hash: bytes


def _issuer_facts(issuer: x509.Certificate) -> _IssuerFacts:
    return _IssuerFacts(issuer.subject.public_bytes(), key_hash(issuer))


_ISSUERS: IdentityMemo[x509.Certificate, _IssuerFacts] = IdentityMemo()
_DISTRIBUTION_POINTS: IdentityMemo[x509.Certificate, list[str]] = IdentityMemo()


class CrlSet:
    """The CRLs of one source (a file or a URL), with their revoked serials indexed."""

    def __init__(self, location: str, crls: list[x509.CertificateRevocationList]) -> None:
        self.location = location
        self.entries = [_Entry.of(c) for c in crls]

    def fresh_until(self) -> dt.datetime:
        """Until when a download of this set may be reused: its earliest next_update."""
        updates = [e.next_update for e in self.entries if e.next_update is not None]
        return min(updates) if updates else utcnow() + NO_NEXT_UPDATE_TTL

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, role: str) -> None:
        facts = _ISSUERS.get(issuer, _issuer_facts)
        candidates = [e for e in self.entries if e.issuer == facts.subject]
        if not candidates:
            raise StatusUnavailable(f"no CRL from {describe(issuer)!r} in {self.location}")
        ikey = facts.key_hash
        for e in candidates:
            if ikey not in e.verified:
                e.verified[ikey] = e.crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        valid = [e for e in candidates if e.verified[ikey]]
        if not valid:
            raise StatusUnavailable(
                f"CRL signature invalid ({self.location} is not signed by {describe(issuer)!r})"
            )
        entry = max(valid, key=lambda e: e.last_update)
        now = utcnow()
        if entry.last_update > now + SKEW:
            raise StatusUnavailable(f"CRL not valid yet ({self.location})")
        next_update = entry.next_update
        if next_update is not None and next_update < now - SKEW:
            raise StatusUnavailable(
                f"CRL expired (next_update {next_update:%Y-%m-%d %H:%M:%S}Z, {self.location})"
            )
        if cert.serial_number in entry.revoked:
            raise NotGood(f"{role} revoked (CRL)")


class CrlChecker:
    """CRL checks of one listener."""

    def __init__(self, crl_file: str, crl_url: str, timeout: float) -> None:
        self.crl_file = crl_file
        self.crl_url = crl_url
        self.timeout = timeout
        self.downloads: SharedCache[CrlSet] = SharedCache(max_entries=1000)
        self._file: tuple[tuple[int, int, int], CrlSet] | None = None

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, role: str) -> None:
        if self.crl_file:
            self._from_file().check(cert, issuer, role)
            return
        urls = [self.crl_url] if self.crl_url else _DISTRIBUTION_POINTS.get(cert, distribution_points)
        if not urls:
            raise StatusUnavailable(f"no CRL for {describe(cert)!r} (no distribution point, no crl_url)")
        problem: StatusUnavailable | None = None
        for url in urls:
            try:
                crls = self.downloads.get(url, lambda url=url: self._download(url))  # type: ignore[misc]
            except StatusUnavailable as exc:
                problem = exc
                continue
            crls.check(cert, issuer, role)
            return
        assert problem is not None
        raise problem

    def _from_file(self) -> CrlSet:
        try:
            st = os.stat(self.crl_file)
        except OSError as exc:
            raise StatusUnavailable(f"CRL file unreadable: {exc}") from None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._file is not None and self._file[0] == signature:
            return self._file[1]
        try:
            with open(self.crl_file, "rb") as f:
                data = f.read()
            crls = CrlSet(self.crl_file, parse_crls(data))
        except (OSError, ValueError) as exc:
            raise StatusUnavailable(f"CRL file unusable: {self.crl_file}: {exc}") from None
        self._file = (signature, crls)
        return crls

    def _download(self, url: str) -> tuple[CrlSet, dt.datetime]:
        try:
            data = http_get(url, self.timeout)
        except FetchError as exc:
            raise StatusUnavailable(f"CRL distribution point unreachable: {exc}") from None
        try:
            crls = CrlSet(url, parse_crls(data))
        except ValueError as exc:
            raise StatusUnavailable(f"CRL malformed: {url}: {exc}") from None
        return crls, crls.fresh_until()
