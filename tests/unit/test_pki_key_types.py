"""``ferryman certs --key-type rsa | ec``: every key of the development PKI of the asked type (RSA 2048 by
default, EC P-256), signatures that verify, key usages that fit the type, the chain and runtime additions
following the CA's type, and OCSP / CRL signed with an RSA CA verified by the gateway's own checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from ferryman.protocols.tls.ocsp import build_request, verify_response
from ferryman_devtools.pki import KEY_TYPES, write_dev_pki
from ferryman_devtools.pki_extra import issue_client, revoke, write_chain_pki
from ferryman_devtools.responder import DevResponder

PAIRS = ["ca", "server", "client", "client-revoked", "client-unknown", "client-expired"]
CHAIN = ["chain-root", "chain-intermediate", "chain-intermediate-revoked", "chain-client"]
OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module", params=KEY_TYPES)
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    key_type: str = request.param
    directory = tmp_path_factory.mktemp(f"pki-{key_type}")
    write_dev_pki(directory, key_type=key_type)
    write_chain_pki(directory)
    issue_client(directory, "client-later")
    return key_type, directory


def key_of(directory: Path, stem: str) -> object:
    return serialization.load_pem_private_key((directory / f"{stem}.key").read_bytes(), None)


def cert_of(directory: Path, stem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / f"{stem}.crt").read_bytes())


def assert_type(key: object, key_type: str) -> None:
    if key_type == "rsa":
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
        assert key.public_key().public_numbers().e == 65537
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


def test_every_key_and_certificate_is_of_the_asked_type(pki: tuple[str, Path]) -> None:
    key_type, directory = pki
    for stem in [*PAIRS, *CHAIN, "client-later"]:
        key = key_of(directory, stem)
        assert_type(key, key_type)
        cert = cert_of(directory, stem)
        assert cert.public_key() == key.public_key()  # type: ignore[attr-defined]
        algorithm = cert.signature_algorithm_oid
        wanted = (
            x509.SignatureAlgorithmOID.RSA_WITH_SHA256
            if key_type == "rsa"
            else x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
        )
        assert algorithm == wanted, (stem, algorithm)


def test_signatures_verify_along_every_chain(pki: tuple[str, Path]) -> None:
    _, directory = pki
    ca = cert_of(directory, "ca")
    for stem in ["server", "client", "client-revoked", "client-later"]:
        cert_of(directory, stem).verify_directly_issued_by(ca)
    cert_of(directory, "client-unknown").verify_directly_issued_by(
        x509.load_pem_x509_certificate((directory / "unknown-ca.crt").read_bytes())
    )
    root, inter = cert_of(directory, "chain-root"), cert_of(directory, "chain-intermediate")
    inter.verify_directly_issued_by(root)
    cert_of(directory, "chain-client").verify_directly_issued_by(inter)
    crl = x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]


def test_leaf_key_usage_fits_the_key_type(pki: tuple[str, Path]) -> None:
    key_type, directory = pki
    usage = cert_of(directory, "server").extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment is (key_type == "rsa")  # RSA key transport (TLS 1.2 RSA suites)
    assert usage.key_agreement is (key_type == "ec")  # ECDH


@pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")
def test_openssl_verifies_the_server_and_client(pki: tuple[str, Path]) -> None:
    assert OPENSSL is not None
    _, directory = pki
    for name in ("server.crt", "client.crt", "client-later.crt"):
        out = subprocess.run(
            [OPENSSL, "verify", "-CAfile", str(directory / "ca.crt"), str(directory / name)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_revocation_and_ocsp_signed_by_the_ca_verify(pki: tuple[str, Path], tmp_path: Path) -> None:
    _, directory = pki
    work = tmp_path / "pki"
    shutil.copytree(directory, work)
    revoke(work, "client-later.crt")
    ca = cert_of(work, "ca")
    crl = x509.load_pem_x509_crl((work / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert cert_of(work, "client-later").serial_number in {entry.serial_number for entry in crl}
    responder = DevResponder(work)
    for stem, status in (("client", ocsp.OCSPCertStatus.GOOD), ("client-later", ocsp.OCSPCertStatus.REVOKED)):
        request = build_request(cert_of(work, stem), ca, b"n" * 16)
        der = responder.ocsp_response(request.public_bytes(serialization.Encoding.DER))
        assert verify_response(der, request, ca, b"n" * 16).status == status


def test_default_is_rsa_and_unknown_types_are_refused(tmp_path: Path) -> None:
    write_dev_pki(tmp_path / "default")
    assert_type(key_of(tmp_path / "default", "server"), "rsa")
    with pytest.raises(ValueError, match="dsa"):
        write_dev_pki(tmp_path / "bad", key_type="dsa")
    assert not (tmp_path / "bad").exists()


def test_cli_key_type(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ferryman", "certs", str(tmp_path / "ec"), "--key-type", "ec", "--chain"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for stem in ("ca", "server", "client", "chain-client"):
        assert_type(key_of(tmp_path / "ec", stem), "ec")
    out = subprocess.run(
        [sys.executable, "-m", "ferryman", "certs", str(tmp_path / "x"), "--key-type", "ed25519"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "invalid choice: 'ed25519'" in out.stderr
