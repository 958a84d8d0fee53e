"""The client certificate's chain for the revocation checks, built from the leaf and the certificates in
``client_ca_file``: Python 3.11's ``ssl`` cannot hand over the chain OpenSSL verified, so it is rebuilt
here (by name, confirmed by the issuer's signature)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.hashes import HashAlgorithm

__all__ = ["IssuerStore", "describe", "is_self_issued", "issued_by", "key_hash", "verify_signature"]


def describe(cert: x509.Certificate) -> str:
    """A short name for logs: the subject's CN, else the whole subject."""
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.subject.rfc4514_string()


def is_self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def key_hash(cert: x509.Certificate) -> bytes:
    """SHA-1 of the subjectPublicKey bits: OCSP's ResponderID byKey and CertID issuerKeyHash."""
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def verify_signature(
    key: CertificatePublicKeyTypes, signature: bytes, data: bytes, algorithm: HashAlgorithm | None
) -> bool:
    """True when ``signature`` over ``data`` verifies with ``key`` (EC, RSA PKCS#1 v1.5, Ed25519/Ed448)."""
    from cryptography.exceptions import InvalidSignature

    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # TypeError: a key type it cannot check
        return False
    return True


class IssuerStore:
    """The CA certificates of ``client_ca_file``, indexed by subject."""

    def __init__(self, certificates: list[x509.Certificate]) -> None:
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for cert in certificates:
            self._by_subject.setdefault(cert.subject, []).append(cert)

    @classmethod
    def from_file(cls, path: str) -> IssuerStore:
        return cls(x509.load_pem_x509_certificates(Path(path).read_bytes()) if path else [])

    def issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The CA that signed ``cert`` (several candidates: one currently valid is preferred)."""
        now = dt.datetime.now(dt.UTC)
        found = [c for c in self._by_subject.get(cert.issuer, ()) if issued_by(cert, c)]
        found.sort(key=lambda c: not (c.not_valid_before_utc <= now <= c.not_valid_after_utc))
        return found[0] if found else None

    def chain(self, leaf: x509.Certificate, limit: int = 17) -> list[x509.Certificate]:
        """``[leaf, its issuer, ...]`` up to a self-issued root or the first issuer not in the file."""
        chain = [leaf]
        while len(chain) < limit and not is_self_issued(chain[-1]):
            issuer = self.issuer_of(chain[-1])
            if issuer is None or issuer in chain:
                break
            chain.append(issuer)
        return chain
