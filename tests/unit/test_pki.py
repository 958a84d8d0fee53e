"""The development PKI (``ferryman certs DIR``): contract file names, chains, revocation, a real handshake."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ferryman_devtools.pki import write_dev_pki

OCSP_URL = "http://127.0.0.1:18889/ocsp"
CRL_URL = "http://127.0.0.1:18889/crl.pem"
PAIRS = ["ca", "server", "client", "client-revoked", "client-unknown", "client-expired"]
CLIENTS = ["client", "client-revoked", "client-unknown", "client-expired"]
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "certs"
    write_dev_pki(directory, ocsp_url=OCSP_URL, crl_url=CRL_URL)
    return directory


def load(pki: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki / name).read_bytes())


def openssl_verify(pki: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    command = [OPENSSL, "verify", *extra, "-CAfile", str(pki / "ca.crt"), str(pki / name)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_contract_files_and_modes(pki: Path) -> None:
    for name in PAIRS:
        assert stat.S_IMODE((pki / f"{name}.key").stat().st_mode) == 0o600
        assert (pki / f"{name}.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        assert (pki / f"{name}.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert (pki / "crl.pem").read_bytes().startswith(b"-----BEGIN X509 CRL-----")
    assert not (pki / "unknown-ca.key").exists()


def test_returns_every_written_file(tmp_path: Path) -> None:
    written = write_dev_pki(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in tmp_path.iterdir())
    assert {f"{n}.{ext}" for n in PAIRS for ext in ("crt", "key")} <= {p.name for p in written}


def test_ca_constraints(pki: Path) -> None:
    ca = load(pki, "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


@needs_openssl
@pytest.mark.parametrize("name", ["server.crt", "client.crt", "client-revoked.crt"])
def test_openssl_verifies_dev_ca_leaves(pki: Path, name: str) -> None:
    result = openssl_verify(pki, name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_openssl
def test_unknown_client_fails_against_dev_ca(pki: Path) -> None:
    result = openssl_verify(pki, "client-unknown.crt")
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


def test_unknown_client_is_signed_by_another_ca(pki: Path) -> None:
    unknown = load(pki, "client-unknown.crt")
    unknown.verify_directly_issued_by(load(pki, "unknown-ca.crt"))
    with pytest.raises((ValueError, InvalidSignature)):
        unknown.verify_directly_issued_by(load(pki, "ca.crt"))


def test_expired_client(pki: Path) -> None:
    expired = load(pki, "client-expired.crt")
    assert expired.not_valid_after_utc < dt.datetime.now(dt.UTC)
    expired.verify_directly_issued_by(load(pki, "ca.crt"))
    if OPENSSL is not None:
        result = openssl_verify(pki, "client-expired.crt")
        assert result.returncode != 0
        assert "certificate has expired" in result.stdout + result.stderr


@needs_openssl
def test_crl_revokes_only_the_revoked_client(pki: Path) -> None:
    crl_args = ("-crl_check", "-CRLfile", str(pki / "crl.pem"))
    revoked = openssl_verify(pki, "client-revoked.crt", *crl_args)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    good = openssl_verify(pki, "client.crt", *crl_args)
    assert good.returncode == 0, good.stdout + good.stderr


def test_crl_contents(pki: Path) -> None:
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    ca = load(pki, "ca.crt")
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None and crl.next_update_utc > dt.datetime.now(dt.UTC)
    serials = {entry.serial_number for entry in crl}
    assert serials == {load(pki, "client-revoked.crt").serial_number}


def test_server_san_and_eku(pki: Path) -> None:
    server = load(pki, "server.crt")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("name", CLIENTS)
def test_client_cn_and_eku(pki: Path, name: str) -> None:
    cert = load(pki, f"{name}.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.mark.parametrize("name", ["server", "client", "client-revoked", "client-expired"])
def test_dev_ca_leaves_carry_ocsp_and_crl_urls(pki: Path, name: str) -> None:
    cert = load(pki, f"{name}.crt")
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    ocsp = [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.OCSP]
    assert ocsp == [OCSP_URL]
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [uri.value for point in cdp for uri in point.full_name or []] == [CRL_URL]


def test_default_urls(tmp_path: Path) -> None:
    write_dev_pki(tmp_path)
    cert = load(tmp_path, "client.crt")
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert aia[0].access_location.value == "http://127.0.0.1:8889/ocsp"


def test_issued_json(pki: Path) -> None:
    issued = json.loads((pki / "issued.json").read_text())
    for name in PAIRS:
        record = issued[f"{name}.crt"]
        assert int(record["serial"], 16) == load(pki, f"{name}.crt").serial_number
        assert record["revoked"] is (name == "client-revoked")


def test_tls_handshake_with_client_certificate(pki: Path) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    server_ctx.load_verify_locations(pki / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    client_ctx.load_cert_chain(pki / "client.crt", pki / "client.key")
    assert client_ctx.check_hostname

    listener = socket.create_server(("127.0.0.1", 0))
    peer: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            peer.update(tls.getpeercert() or {})
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.recv(2) == b"ok"
            assert tls.getpeercert() is not None
    finally:
        thread.join(10)
        listener.close()
    assert ((("commonName", "client"),)) in peer["subject"]  # type: ignore[operator]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    write_dev_pki(tmp_path)
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(FileExistsError, match=r"ca\.crt"):
        write_dev_pki(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == before
    write_dev_pki(tmp_path, overwrite=True)
    assert (tmp_path / "ca.crt").read_bytes() != before


def test_refuses_when_any_single_file_exists(tmp_path: Path) -> None:
    (tmp_path / "crl.pem").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"crl\.pem"):
        write_dev_pki(tmp_path)
    assert (tmp_path / "crl.pem").read_text() == "keep me"
    assert not (tmp_path / "ca.crt").exists()


def test_overwrite_restores_key_mode(tmp_path: Path) -> None:
    (tmp_path / "client.key").write_text("old")
    (tmp_path / "client.key").chmod(0o644)
    write_dev_pki(tmp_path, overwrite=True)
    assert stat.S_IMODE((tmp_path / "client.key").stat().st_mode) == 0o600
