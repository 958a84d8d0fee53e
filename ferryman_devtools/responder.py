"""A development OCSP responder and CRL server for a PKI written by ``ferryman certs DIR``
(``ferryman responder DIR``).

- ``POST /ocsp`` (body: DER OCSPRequest) and ``GET /ocsp/<base64 request>``: signed by the CA that issued
  the certificate asked about, good / revoked / unknown from ``issued.json``, the request's nonce echoed,
  next_update ``next_update`` from now.
- ``GET /crl.pem`` and ``/crl.der``: a fresh CRL of the development CA (``ca.crt``); ``GET
  /crl/<stem>.pem|.der``: the CRL of any other CA in the directory (``chain-root``, ...).

``issued.json`` is re-read on every request, so revoking a certificate (``pki_extra.revoke``, beside this
module) takes effect at once. Every CA recorded in ``issued.json`` whose key file is present can answer.

For tests the responder misbehaves on demand (``faults``) and counts the requests it served."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferryman.protocols.tls.chain import key_hash

__all__ = ["DevResponder", "ResponderFaults"]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass
class ResponderFaults:
    """Deliberate misbehaviour, for tests of every refusal path. All off by default."""

    wrong_key: bool = False  # OCSP responses whose signature does not verify
    stale: bool = False  # this_update and next_update in the past
    drop_nonce: bool = False  # answer without the request's nonce
    wrong_nonce: bool = False  # answer with another nonce
    delegate: bool = False  # sign with a delegated OCSP responder certificate (OCSPSigning EKU)
    delegate_without_eku: bool = False  # ... a delegated certificate without the OCSPSigning EKU
    status: str = ""  # an unsuccessful OCSP status instead of an answer: "try_later", "internal_error", ...
    delay: float = 0.0  # seconds to wait before answering anything
    crl_wrong_key: bool = False  # sign CRLs with a throwaway key
    crl_stale: bool = False  # CRLs whose next_update is past
    http_status: int = 0  # answer everything with this HTTP status (e.g. 503)


@dataclass(frozen=True)
class _Ca:
    stem: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey  # `ferryman certs --key-type ec | rsa`


class DevResponder:
    """The responder over ``directory``; ``wsgi`` is its WSGI app, ``start(address)`` serves it."""

    def __init__(self, directory: Path, next_update: dt.timedelta = dt.timedelta(hours=1)) -> None:
        self.directory = Path(directory)
        self.next_update = next_update
        self.faults = ResponderFaults()
        self.requests: Counter[str] = Counter()  # "ocsp", "crl"
        self.server: Any = None
        self._delegates: dict[tuple[str, bool], tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}
        self._throwaway = ec.generate_private_key(ec.SECP256R1())

    # ---------------------------------------------------------------------------------------- state

    def issued(self) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = json.loads((self.directory / "issued.json").read_text())
        return data

    def authorities(self) -> list[_Ca]:
        """Every CA of the directory with its key: ``ca`` first, then the others recorded in issued.json."""
        stems = ["ca"] + [n[: -len(".crt")] for n in self.issued() if n.endswith(".crt") and n != "ca.crt"]
        found = []
        for stem in stems:
            crt, key = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
            if not (crt.exists() and key.exists()):
                continue
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            try:
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            private = serialization.load_pem_private_key(key.read_bytes(), None)
            if is_ca and isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                found.append(_Ca(stem, cert, private))
        return found

    def _status_of(self, ca: _Ca, serial: int) -> bool | None:
        """True revoked, False good, None unknown."""
        subject = ca.cert.subject.rfc4514_string()
        for record in self.issued().values():
            if record.get("issuer") == subject and int(str(record["serial"]), 16) == serial:
                return bool(record.get("revoked"))
        return None

    def _delegate(self, ca: _Ca, with_eku: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cached = self._delegates.get((ca.stem, with_eku))
        if cached is not None:
            return cached
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"OCSP responder for {ca.stem}")])
            )
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if with_eku:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
            )
        pair = (builder.sign(ca.key, hashes.SHA256()), key)
        self._delegates[(ca.stem, with_eku)] = pair
        return pair

    # ---------------------------------------------------------------------------------------- OCSP

    def ocsp_response(self, request_der: bytes) -> bytes:
        """The DER OCSPResponse for a DER OCSPRequest."""
        f = self.faults
        try:
            request = ocsp.load_der_ocsp_request(request_der)
        except (ValueError, NotImplementedError):  # NotImplementedError: several certificates in one
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if f.status:
            return _unsuccessful(ocsp.OCSPResponseStatus[f.status.upper()])
        ca = next((c for c in self.authorities() if _matches(request, c.cert)), None)
        if ca is None:
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        this_update = now - dt.timedelta(minutes=1)
        next_update = now + self.next_update
        if f.stale:
            this_update, next_update = now - dt.timedelta(days=2), now - dt.timedelta(days=1)
        revoked = self._status_of(ca, request.serial_number)
        status = {None: ocsp.OCSPCertStatus.UNKNOWN, False: ocsp.OCSPCertStatus.GOOD}.get(
            revoked, ocsp.OCSPCertStatus.REVOKED
        )
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            request.issuer_name_hash,
            request.issuer_key_hash,
            request.serial_number,
            request.hash_algorithm,
            status,
            this_update,
            next_update,
            this_update if status == ocsp.OCSPCertStatus.REVOKED else None,
            None,
        )
        signer_cert, signer_key = ca.cert, ca.key
        if f.delegate or f.delegate_without_eku:
            signer_cert, signer_key = self._delegate(ca, with_eku=not f.delegate_without_eku)
            builder = builder.certificates([signer_cert])
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer_cert)
        nonce = _nonce(request)
        if nonce is not None and not f.drop_nonce:
            echoed = bytes(reversed(nonce)) + b"x" if f.wrong_nonce else nonce
            builder = builder.add_extension(x509.OCSPNonce(echoed), critical=False)
        signed = builder.sign(signer_key, hashes.SHA256())
        der = signed.public_bytes(serialization.Encoding.DER)
        if f.wrong_key:  # cryptography will not sign with a key that does not match: spoil the signature
            sig = signed.signature
            der = der.replace(sig, sig[:-1] + bytes([sig[-1] ^ 0x01]))
        return der

    # ---------------------------------------------------------------------------------------- CRL

    def crl(self, stem: str = "ca") -> x509.CertificateRevocationList:
        ca = next((c for c in self.authorities() if c.stem == stem), None)
        if ca is None:
            raise KeyError(stem)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        last, nxt = now - dt.timedelta(minutes=1), now + self.next_update
        if self.faults.crl_stale:
            last, nxt = now - dt.timedelta(days=2), now - dt.timedelta(days=1)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.cert.subject)
            .last_update(last)
            .next_update(nxt)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        )
        subject = ca.cert.subject.rfc4514_string()
        for record in self.issued().values():
            if record.get("revoked") and record.get("issuer") == subject:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(str(record["serial"]), 16))
                    .revocation_date(last)
                    .build()
                )
        key = self._throwaway if self.faults.crl_wrong_key else ca.key
        return builder.sign(key, hashes.SHA256())

    # ---------------------------------------------------------------------------------------- HTTP

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        method: str = environ.get("REQUEST_METHOD", "GET")
        if path == "/ocsp" or path.startswith("/ocsp/"):
            self.requests["ocsp"] += 1  # counted on arrival, also when a fault delays or spoils the answer
        elif _crl_path(path)[0]:
            self.requests["crl"] += 1
        if self.faults.delay:
            gevent.sleep(self.faults.delay)
        status, content_type, body = self._route(method, path, environ)
        if self.faults.http_status:
            status, body = f"{self.faults.http_status} Fault", b""
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def _route(self, method: str, path: str, environ: dict[str, Any]) -> tuple[str, str, bytes]:
        ocsp_type = "application/ocsp-response"
        if path == "/ocsp" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            return "200 OK", ocsp_type, self.ocsp_response(environ["wsgi.input"].read(length))
        if path.startswith("/ocsp/") and method == "GET":
            encoded = urllib.parse.unquote(path[len("/ocsp/") :])
            try:
                der = base64.b64decode(
                    encoded.replace("-", "+").replace("_", "/") + "=" * (-len(encoded) % 4)
                )
            except (binascii.Error, ValueError):
                return "400 Bad Request", "text/plain", b"bad base64\n"
            return "200 OK", ocsp_type, self.ocsp_response(der)
        stem, fmt = _crl_path(path)
        if stem and method == "GET":
            try:
                crl = self.crl(stem)
            except KeyError:
                return "404 Not Found", "text/plain", b"no such CA\n"
            if fmt == "pem":
                return "200 OK", "application/x-pem-file", crl.public_bytes(serialization.Encoding.PEM)
            return "200 OK", "application/pkix-crl", crl.public_bytes(serialization.Encoding.DER)
        return "404 Not Found", "text/plain", b"not found\n"

    def start(self, address: tuple[str, int] = ("127.0.0.1", 8889)) -> tuple[str, int]:
        """Serve on ``address`` in the background (greenlets); returns the bound address."""
        from gevent.pywsgi import WSGIServer

        self.server = WSGIServer(address, self.wsgi, log=None, error_log=None)
        self.server.start()
        host, port = self.server.address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None


def _crl_path(path: str) -> tuple[str, str]:
    if path in ("/crl.pem", "/crl.der"):
        return "ca", path[-3:]
    if path.startswith("/crl/") and path.endswith((".pem", ".der")):
        return path[len("/crl/") : -4], path[-3:]
    return "", ""


def _matches(request: ocsp.OCSPRequest, ca: x509.Certificate) -> bool:
    if request.hash_algorithm.name != "sha1":
        return False
    name_hash = hashes.Hash(hashes.SHA1())
    name_hash.update(ca.subject.public_bytes())
    return request.issuer_key_hash == key_hash(ca) and request.issuer_name_hash == name_hash.finalize()


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)
