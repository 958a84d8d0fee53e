"""OCSP (RFC 6960) for client certificates: the request, the POST, and the checks on the answer.

A response is accepted only when it is signed by the certificate's issuer, or by a delegated responder
certificate that the issuer signed and marked with the OCSPSigning EKU; when it answers for exactly the
certificate asked about; when it is inside its this_update / next_update window (with ``SKEW`` of clock
allowance); and, with ``ocsp_nonce``, when it echoes the request's nonce. Good and revoked answers are
cached until their next_update, keyed by issuer and serial."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from .cache import IdentityMemo, SharedCache, utcnow
from .chain import describe, issued_by, key_hash, verify_signature
from .fetch import FetchError, http_post
from .status import NotGood, StatusUnavailable

__all__ = ["SKEW", "OcspAnswer", "OcspChecker", "build_request", "responder_url", "verify_response"]

SKEW = dt.timedelta(minutes=2)  # clock difference tolerated between the gateway and the responder
NONCE_BYTES = 16


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    status: ocsp.OCSPCertStatus
    this_update: dt.datetime
    next_update: dt.datetime | None


def responder_url(cert: x509.Certificate) -> str | None:
    """The first OCSP URL of the certificate's Authority Information Access, or None."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            desc.access_location, x509.UniformResourceIdentifier
        ):
            return str(desc.access_location.value)
    return None


def build_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None) -> ocsp.OCSPRequest:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        cert, issuer, hashes.SHA1()
    )  # CertID hashes: SHA-1 is what responders expect
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build()


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime) -> x509.Certificate:
    """The certificate whose key must have signed ``response``: the issuer, or an authorized delegate."""

    def named(cert: x509.Certificate) -> bool:
        if response.responder_key_hash is not None:
            return response.responder_key_hash == key_hash(cert)
        return response.responder_name == cert.subject

    if named(issuer):
        return issuer
    for cert in response.certificates:
        if not named(cert):
            continue
        if not issued_by(cert, issuer):
            raise StatusUnavailable(f"OCSP responder certificate {describe(cert)!r} not issued by the CA")
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise StatusUnavailable(
                f"OCSP responder certificate {describe(cert)!r} lacks the OCSPSigning EKU"
            )
        if not (cert.not_valid_before_utc - SKEW <= now <= cert.not_valid_after_utc + SKEW):
            raise StatusUnavailable(f"OCSP responder certificate {describe(cert)!r} is not valid now")
        return cert
    raise StatusUnavailable("OCSP response signed by an unauthorized responder")


def verify_response(
    der: bytes,
    request: ocsp.OCSPRequest,
    issuer: x509.Certificate,
    nonce: bytes | None,
    now: dt.datetime | None = None,
) -> OcspAnswer:
    """Parse and check a DER OCSPResponse for ``request``; StatusUnavailable says what is wrong."""
    now = now or utcnow()
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise StatusUnavailable(f"OCSP response malformed: {exc}") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise StatusUnavailable(f"OCSP responder answered {response.response_status.name}")
    signer = _signer(response, issuer, now)
    if not verify_signature(
        signer.public_key(),
        response.signature,
        response.tbs_response_bytes,
        response.signature_hash_algorithm,
    ):
        raise StatusUnavailable("OCSP response signature invalid")
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            raise StatusUnavailable("OCSP response without the request's nonce") from None
        if echoed != nonce:
            raise StatusUnavailable("OCSP response nonce mismatch")
    for single in response.responses:
        if (
            single.serial_number == request.serial_number
            and single.issuer_key_hash == request.issuer_key_hash
            and single.issuer_name_hash == request.issuer_name_hash
            and single.hash_algorithm.name == request.hash_algorithm.name
        ):
            break
    else:
        raise StatusUnavailable("OCSP response is not about the certificate asked for")
    this_update, next_update = single.this_update_utc, single.next_update_utc
    if this_update > now + SKEW:
        raise StatusUnavailable(f"OCSP response not valid yet (this_update {this_update:%Y-%m-%d %H:%M:%S}Z)")
    if next_update is not None and next_update < now - SKEW:
        raise StatusUnavailable(f"OCSP response stale (next_update {next_update:%Y-%m-%d %H:%M:%S}Z)")
    return OcspAnswer(single.certificate_status, this_update, next_update)


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


class OcspChecker:
    """OCSP for one listener: ``check(cert, issuer)`` returns when the certificate is good, raises
    NotGood (revoked / unknown) or StatusUnavailable."""

    def __init__(self, url_override: str, timeout: float, nonce: bool) -> None:
        self.url_override = url_override
        self.timeout = timeout
        self.nonce = nonce
        self.cache: SharedCache[OcspAnswer] = SharedCache()
        self._issuer_ids: IdentityMemo[x509.Certificate, bytes] = IdentityMemo()

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, role: str) -> None:
        key = (self._issuer_ids.get(issuer, _fingerprint), cert.serial_number)
        answer = self.cache.get(key, lambda: self._fetch(cert, issuer))
        if answer.status == ocsp.OCSPCertStatus.REVOKED:
            raise NotGood(f"{role} revoked (OCSP)")
        if answer.status != ocsp.OCSPCertStatus.GOOD:
            raise NotGood(f"{role} unknown to the OCSP responder")

    def _fetch(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[OcspAnswer, dt.datetime]:
        url = self.url_override or responder_url(cert)
        if not url:
            raise StatusUnavailable(
                f"no OCSP responder for {describe(cert)!r} (no AIA, no ocsp_responder_url)"
            )
        nonce = os.urandom(NONCE_BYTES) if self.nonce else None
        request = build_request(cert, issuer, nonce)
        body = request.public_bytes(serialization.Encoding.DER)
        try:
            der = http_post(url, body, "application/ocsp-request", "application/ocsp-response", self.timeout)
        except FetchError as exc:
            raise StatusUnavailable(f"OCSP responder unreachable: {exc}") from None
        answer = verify_response(der, request, issuer, nonce)
        # Unknown is not cached: the CA may learn of the certificate any moment.
        if answer.status == ocsp.OCSPCertStatus.UNKNOWN or answer.next_update is None:
            return answer, utcnow()
        return answer, answer.next_update
