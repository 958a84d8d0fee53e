"""Development PKI for ``ferryman certs DIR``: a CA and the leaves the TLS/mTLS tests need.

Keys are RSA 2048 (``key_type="rsa"``, the default) or EC P-256 / ECDSA (``key_type="ec"``), one type for
the whole PKI; certificates are signed with SHA-256. Everything is PEM, keys unencrypted (PKCS#8) with
mode 0600. The file names are a contract:

========================  ==========================================================================
ca.crt / ca.key           the development CA (BasicConstraints CA=true, keyCertSign + cRLSign)
server.crt / server.key   CN localhost, SAN DNS:localhost + IP:127.0.0.1, EKU serverAuth
client.crt / .key         CN client, EKU clientAuth
client-revoked.crt/.key   CN client-revoked, listed in crl.pem
client-unknown.crt/.key   CN client-unknown, signed by a throwaway CA (only unknown-ca.crt is kept)
client-expired.crt/.key   CN client-expired, not_valid_after in the past
crl.pem                   CRL signed by the CA listing client-revoked's serial, next_update in the future
unknown-ca.crt            the throwaway CA's certificate (its key is discarded)
issued.json               file -> {"serial", "subject", "issuer", "revoked"} for an OCSP responder
========================  ==========================================================================

Every leaf issued by the development CA carries an AIA OCSP URL (``ocsp_url``) and a CRL distribution
point (``crl_url``) so tests can point them at a local responder. An OCSP responder needs only
``ca.crt`` and ``ca.key`` (it signs responses with the CA key itself) plus ``issued.json`` to know which
serials exist and which are revoked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

__all__ = [
    "CONTRACT_FILES",
    "DEFAULT_CRL_URL",
    "DEFAULT_KEY_TYPE",
    "DEFAULT_OCSP_URL",
    "KEY_TYPES",
    "PrivateKey",
    "key_type_of",
    "new_key",
    "write_dev_pki",
]

DEFAULT_OCSP_URL = "http://127.0.0.1:8889/ocsp"
DEFAULT_CRL_URL = "http://127.0.0.1:8889/crl.pem"

CONTRACT_FILES: tuple[str, ...] = (
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
    "client-revoked.crt",
    "client-revoked.key",
    "client-unknown.crt",
    "client-unknown.key",
    "client-expired.crt",
    "client-expired.key",
    "crl.pem",
    "unknown-ca.crt",
    "issued.json",
)

_ORG = "ferryman development"
_BACKDATE = dt.timedelta(days=1)
_EXPIRED_AGO = dt.timedelta(days=2)
_CRL_LIFETIME = dt.timedelta(days=30)

KEY_TYPES: tuple[str, ...] = ("rsa", "ec")  # ``ferryman certs --key-type``
DEFAULT_KEY_TYPE = "rsa"
RSA_BITS = 2048

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class _Issued:
    """A certificate with its key, as written to ``<name>.crt`` / ``<name>.key``."""

    name: str
    cert: x509.Certificate
    key: PrivateKey


def new_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """A fresh private key: ``"rsa"`` (2048 bits, e = 65537) or ``"ec"`` (P-256, for ECDSA)."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key type {key_type!r} is not one of {', '.join(KEY_TYPES)}")


def key_type_of(key: object) -> str:
    """``"rsa"`` or ``"ec"`` for a private key of the development PKI (ValueError for anything else)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ec"
    raise ValueError(f"{type(key).__name__} is neither an RSA nor an EC private key")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _make_ca(name: str, common_name: str, now: dt.datetime, days: int, key_type: str) -> _Issued:
    key = new_key(key_type)
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated past the expired client's validity so its chain is otherwise sound.
        .not_valid_before(now - _EXPIRED_AGO - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Issued(name, cert, key)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage(key: PrivateKey) -> x509.KeyUsage:
    """digitalSignature, plus keyEncipherment for RSA (TLS 1.2 RSA key transport) or keyAgreement for EC."""
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=not is_rsa,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _revocation_extensions(ocsp_url: str, crl_url: str) -> list[x509.ExtensionType]:
    aia = x509.AuthorityInformationAccess(
        [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]
    )
    cdp = x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(crl_url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )
    return [aia, cdp]


def _make_leaf(
    name: str,
    ca: _Issued,
    *,
    common_name: str | None = None,
    eku: x509.ObjectIdentifier,
    validity: tuple[dt.datetime, dt.datetime],
    extra: list[x509.ExtensionType],
    key_type: str | None = None,
) -> _Issued:
    """A leaf signed by ``ca``; its key is of ``key_type`` (default: the CA's own type)."""
    key = new_key(key_type or key_type_of(ca.key))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name or name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return _Issued(name, builder.sign(ca.key, hashes.SHA256()), key)


def _make_crl(
    ca: _Issued, revoked: list[x509.Certificate], now: dt.datetime
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + _CRL_LIFETIME)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for cert in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - _BACKDATE)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with permission bits ``mode``, also when the file already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _check_free(directory: Path, overwrite: bool) -> None:
    if overwrite:
        return
    for name in CONTRACT_FILES:
        path = directory / name
        if path.exists():
            raise FileExistsError(f"{path} already exists; refusing to overwrite the development PKI")


def _issued_record(item: _Issued, revoked: bool) -> dict[str, object]:
    return {
        "serial": format(item.cert.serial_number, "x"),
        "subject": item.cert.subject.rfc4514_string(),
        "issuer": item.cert.issuer.rfc4514_string(),
        "not_valid_after": item.cert.not_valid_after_utc.isoformat(),
        "revoked": revoked,
    }


def write_dev_pki(
    directory: Path,
    *,
    ocsp_url: str = DEFAULT_OCSP_URL,
    crl_url: str = DEFAULT_CRL_URL,
    days: int = 825,
    overwrite: bool = False,
    key_type: str = DEFAULT_KEY_TYPE,
) -> list[Path]:
    """Create the development PKI in ``directory`` (made if missing) and return the files written. Every
    key is of ``key_type`` (``"rsa"``: RSA 2048, ``"ec"``: EC P-256; ValueError for anything else).

    Raises ``FileExistsError`` naming the first contract file already present unless ``overwrite``.
    Serials in ``issued.json`` are lowercase hex without a prefix.
    """
    directory = Path(directory)
    if key_type not in KEY_TYPES:
        raise ValueError(f"key type {key_type!r} is not one of {', '.join(KEY_TYPES)}")
    _check_free(directory, overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    current = (now - _BACKDATE, now + dt.timedelta(days=days))
    expired = (now - _EXPIRED_AGO - dt.timedelta(days=30), now - _EXPIRED_AGO)
    revocation = _revocation_extensions(ocsp_url, crl_url)
    server_san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
    )
    client_auth = ExtendedKeyUsageOID.CLIENT_AUTH

    ca = _make_ca("ca", "ferryman development CA", now, days, key_type)
    unknown_ca = _make_ca("unknown-ca", "ferryman unknown CA", now, days, key_type)
    # CN "localhost" for tools that still read it; clients match the SAN.
    server = _make_leaf(
        "server",
        ca,
        common_name="localhost",
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        validity=current,
        extra=[server_san, *revocation],
    )
    client = _make_leaf("client", ca, eku=client_auth, validity=current, extra=revocation)
    revoked = _make_leaf("client-revoked", ca, eku=client_auth, validity=current, extra=revocation)
    unknown = _make_leaf("client-unknown", unknown_ca, eku=client_auth, validity=current, extra=[])
    expired_client = _make_leaf("client-expired", ca, eku=client_auth, validity=expired, extra=revocation)
    crl = _make_crl(ca, [revoked.cert], now)

    pairs = [ca, server, client, revoked, unknown, expired_client]
    written: list[Path] = []
    for item in pairs:
        _write(directory / f"{item.name}.crt", _cert_pem(item.cert), 0o644)
        _write(directory / f"{item.name}.key", _key_pem(item.key), 0o600)
        written += [directory / f"{item.name}.crt", directory / f"{item.name}.key"]
    _write(directory / "crl.pem", crl.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(directory / "unknown-ca.crt", _cert_pem(unknown_ca.cert), 0o644)
    issued = {f"{item.name}.crt": _issued_record(item, item is revoked) for item in pairs}
    _write(directory / "issued.json", (json.dumps(issued, indent=2) + "\n").encode(), 0o644)
    written += [directory / "crl.pem", directory / "unknown-ca.crt", directory / "issued.json"]
    return written
