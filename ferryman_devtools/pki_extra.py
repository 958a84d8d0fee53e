"""Additions to the development PKI that are not part of ``ferryman certs``' contract: a two-level chain
(root -> intermediate -> client) for the ``verify_depth`` checks, more client certificates, and revoking
a certificate at runtime (``issued.json`` and ``crl.pem`` rewritten; a running responder sees it at once).

Chain files (``write_chain_pki``), all next to the contract files, all recorded in ``issued.json``:

=================================  =====================================================================
chain-root.crt / .key              a root CA that allows one intermediate level (path length 1)
chain-intermediate.crt / .key      an intermediate CA issued by chain-root
chain-intermediate-revoked.crt/.key  another intermediate, revoked by chain-root
chain-client.crt / .key            a client issued by chain-intermediate
chain-client-of-revoked.crt / .key   a client issued by chain-intermediate-revoked (itself not revoked)
chain-ca-bundle.crt                chain-root + both intermediates: the listener's ``client_ca_file``
=================================  =====================================================================

Leaves and intermediates carry the responder's OCSP URL (``<base>/ocsp``) and a CRL distribution point
``<base>/crl/<issuer file stem>.pem``, which ``ferryman responder`` serves for every CA it knows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from .pki import (
    _BACKDATE,
    _ca_usage,
    _cert_pem,
    _Issued,
    _issued_record,
    _key_pem,
    _make_crl,
    _make_leaf,
    _name,
    _revocation_extensions,
    _write,
    key_type_of,
    new_key,
)

__all__ = ["issue_client", "load_issued", "revoke", "write_chain_pki"]


def load_issued(directory: Path) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads((Path(directory) / "issued.json").read_text())
    return data


def _save_issued(directory: Path, issued: dict[str, dict[str, object]]) -> None:
    _write(Path(directory) / "issued.json", (json.dumps(issued, indent=2) + "\n").encode(), 0o644)


def _load_pair(directory: Path, stem: str) -> _Issued:
    cert = x509.load_pem_x509_certificate((directory / f"{stem}.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / f"{stem}.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{directory / stem}.key: neither an RSA nor an EC key")
    return _Issued(stem, cert, key)


def _make_sub_ca(
    name: str,
    common_name: str,
    issuer: _Issued | None,
    path_length: int,
    now: dt.datetime,
    extra: list[x509.ExtensionType],
    key_type: str,
) -> _Issued:
    key = new_key(key_type)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=40))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
    )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return _Issued(name, builder.sign(signer_key, hashes.SHA256()), key)


def _base_url(directory: Path) -> str:
    """The responder base URL the contract leaves point at (from client.crt's AIA)."""
    from ferryman.protocols.tls.ocsp import responder_url

    url = responder_url(x509.load_pem_x509_certificate((directory / "client.crt").read_bytes()))
    return (url or "http://127.0.0.1:8889/ocsp").rsplit("/", 1)[0]


def _store(directory: Path, items: list[tuple[_Issued, bool]]) -> list[Path]:
    issued = load_issued(directory)
    written = []
    for item, revoked in items:
        _write(directory / f"{item.name}.crt", _cert_pem(item.cert), 0o644)
        _write(directory / f"{item.name}.key", _key_pem(item.key), 0o600)
        issued[f"{item.name}.crt"] = _issued_record(item, revoked)
        written += [directory / f"{item.name}.crt", directory / f"{item.name}.key"]
    _save_issued(directory, issued)
    return written


def write_chain_pki(directory: Path, key_type: str | None = None) -> list[Path]:
    """Add the chain files to an existing development PKI (see the module docstring). Their keys are of
    ``key_type`` (``"rsa"`` or ``"ec"``; default: the type of the PKI's ``ca.key``)."""
    directory = Path(directory)
    base = _base_url(directory)
    key_type = key_type or key_type_of(_load_pair(directory, "ca").key)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    current = (now - _BACKDATE, now + dt.timedelta(days=825))
    root = _make_sub_ca("chain-root", "ferryman chain root CA", None, 1, now, [], key_type)
    under_root = _revocation_extensions(f"{base}/ocsp", f"{base}/crl/chain-root.pem")
    inter = _make_sub_ca("chain-intermediate", "ferryman intermediate CA", root, 0, now, under_root, key_type)
    bad = _make_sub_ca(
        "chain-intermediate-revoked", "ferryman revoked intermediate CA", root, 0, now, under_root, key_type
    )
    client_auth = ExtendedKeyUsageOID.CLIENT_AUTH
    client = _make_leaf(
        "chain-client",
        inter,
        eku=client_auth,
        validity=current,
        extra=_revocation_extensions(f"{base}/ocsp", f"{base}/crl/chain-intermediate.pem"),
    )
    orphan = _make_leaf(
        "chain-client-of-revoked",
        bad,
        eku=client_auth,
        validity=current,
        extra=_revocation_extensions(f"{base}/ocsp", f"{base}/crl/chain-intermediate-revoked.pem"),
    )
    written = _store(
        directory, [(root, False), (inter, False), (bad, True), (client, False), (orphan, False)]
    )
    bundle = directory / "chain-ca-bundle.crt"
    _write(bundle, b"".join(_cert_pem(c.cert) for c in (root, inter, bad)), 0o644)
    return [*written, bundle]


def issue_client(
    directory: Path, name: str, *, ocsp_url: str | None = None, crl_url: str | None = None
) -> Path:
    """A new client certificate ``<name>.crt`` / ``.key`` from the development CA (its key of the CA's
    type), recorded as good in ``issued.json``. Returns the certificate's path."""
    directory = Path(directory)
    base = _base_url(directory)
    ca = _load_pair(directory, "ca")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    leaf = _make_leaf(
        name,
        ca,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        validity=(now - _BACKDATE, now + dt.timedelta(days=30)),
        extra=_revocation_extensions(ocsp_url or f"{base}/ocsp", crl_url or f"{base}/crl.pem"),
    )
    _store(directory, [(leaf, False)])
    return directory / f"{name}.crt"


def revoke(directory: Path, file_name: str, revoked: bool = True) -> None:
    """Mark ``file_name`` (an ``issued.json`` key such as ``client.crt``) revoked (or good again) and
    rewrite ``crl.pem`` for the development CA to match."""
    directory = Path(directory)
    issued = load_issued(directory)
    if file_name not in issued:
        raise KeyError(f"{file_name} is not in {directory / 'issued.json'}")
    issued[file_name]["revoked"] = revoked
    _save_issued(directory, issued)
    ca = _load_pair(directory, "ca")
    subject = ca.cert.subject.rfc4514_string()
    listed = [
        x509.load_pem_x509_certificate((directory / name).read_bytes())
        for name, record in issued.items()
        if record.get("revoked") and record.get("issuer") == subject and (directory / name).exists()
    ]
    crl = _make_crl(ca, listed, dt.datetime.now(dt.UTC).replace(microsecond=0))
    _write(directory / "crl.pem", crl.public_bytes(serialization.Encoding.PEM), 0o644)
