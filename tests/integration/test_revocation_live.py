"""Revocation checks of client certificates on a live mTLS MQTT listener, from outside: mosquitto_pub with
the dev PKI's certificates against a ``ferryman run`` process, the dev OCSP/CRL responder in this process
(its answers can be spoiled on purpose and its requests counted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferryman_devtools.pki_extra import issue_client, revoke
from ferryman_devtools.responder import DevResponder, ResponderFaults
from tests.revocation_support import (
    LogWindow,
    dead_url,
    pub,
    responder_port,
    restart,
    start_pki_and_responder,
)
from tests.servers import GatewayProcess, Mosquitto

LISTENER = """
[[listener]]
name = "{name}"
protocol = "mqtt"
address = "127.0.0.1:{{port{index}}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/{ca}"
{tls}
"""
HEAD = """
[log]
level = "info"
[metrics]
address = ""
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["tls/#"]
subscribe = ["tls/#"]
"""
# name -> extra [listener.tls] lines; {url} is the responder's base URL, {dead} a port nothing listens on
LISTENERS: dict[str, str] = {
    "ocsp": 'verify = ["ocsp"]',
    "crl": 'verify = ["crl"]',  # the certificate's distribution point
    "both": 'verify = ["ocsp", "crl"]',
    "crl-url": 'verify = ["crl"]\ncrl_url = "{url}/crl.der"',
    "crl-file": 'verify = ["crl"]\ncrl_file = "{pki}/crl.pem"',
    "down": 'verify = ["ocsp", "crl"]\nocsp_responder_url = "{dead}/ocsp"\ncrl_url = "{dead}/crl.pem"\n'
    "revocation_timeout = 1.0",
    "down-open": 'verify = ["ocsp", "crl"]\nocsp_responder_url = "{dead}/ocsp"\ncrl_url = "{dead}/crl.pem"\n'
    "revocation_timeout = 1.0\nrevocation_fail_open = true",
    "chain-depth2": 'verify = ["ocsp", "crl"]\nverify_depth = 2',
    "chain-depth1": 'verify = ["ocsp", "crl"]\nverify_depth = 1',
    "chain-default": 'verify = ["ocsp", "crl"]',  # no verify_depth: the whole chain
}
NAMES = list(LISTENERS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("livepki")


@pytest.fixture(scope="module")
def responder(pki: Path) -> Iterator[DevResponder]:
    r = start_pki_and_responder(pki)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def gw(
    broker: Mosquitto, pki: Path, responder: DevResponder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    url = f"http://127.0.0.1:{responder_port(responder)}"
    dead = dead_url("").rstrip("/")
    parts = [HEAD]
    for index, (name, tls) in enumerate(LISTENERS.items()):
        ca = "chain-ca-bundle.crt" if name.startswith("chain") else "ca.crt"
        extra = tls.format(url=url, dead=dead, pki=pki)
        parts.append(LISTENER.format(name=name, index=index, broker=broker.port, pki=pki, ca=ca, tls=extra))
    gateway = GatewayProcess(tmp_path_factory.mktemp("revgw"), "".join(parts), ports=len(LISTENERS))
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, err[-3000:]


@pytest.fixture(autouse=True)
def healthy(responder: DevResponder) -> Iterator[None]:
    responder.faults = ResponderFaults()
    yield
    responder.faults = ResponderFaults()


def port(gw: GatewayProcess, name: str) -> int:
    return gw.ports[NAMES.index(name)]


def accepted(gw: GatewayProcess, pki: Path, listener: str, client: str) -> None:
    out = pub(port(gw, listener), pki, client)
    assert out.returncode == 0, f"{client} refused on {listener}: {out.stderr}\n{gw.stderr()[-1500:]}"


def refused(gw: GatewayProcess, pki: Path, listener: str, client: str | None, reason: str) -> None:
    log = LogWindow(gw)
    out = pub(port(gw, listener), pki, client)
    assert out.returncode != 0, f"{client} accepted on {listener}"
    assert "TLS handshake with" in log.wait_for(reason)


@pytest.mark.parametrize("listener", ["ocsp", "crl", "both", "crl-url", "crl-file"])
@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("client", ""),
        ("client-revoked", "client certificate revoked ("),
        ("client-unknown", "unable to get local issuer certificate"),
        ("client-expired", "certificate has expired"),
        (None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ],
)
def test_matrix(gw: GatewayProcess, pki: Path, listener: str, client: str | None, reason: str) -> None:
    if client == "client":
        accepted(gw, pki, listener, client)
    else:
        refused(gw, pki, listener, client, reason)


def test_revoked_reason_names_the_check(gw: GatewayProcess, pki: Path) -> None:
    refused(gw, pki, "ocsp", "client-revoked", "client certificate revoked (OCSP)")
    refused(gw, pki, "crl", "client-revoked", "client certificate revoked (CRL)")
    refused(gw, pki, "crl-url", "client-revoked", "client certificate revoked (CRL)")


def test_responder_down_refuses_unless_fail_open(gw: GatewayProcess, pki: Path) -> None:
    refused(gw, pki, "down", "client", "OCSP responder unreachable: ")
    log = LogWindow(gw)
    accepted(gw, pki, "down-open", "client")
    assert "revocation status unknown, accepted (revocation_fail_open" in log.wait_for("fail_open")
    # failing open never lets in what is known to be revoked: the expired client still fails the handshake
    refused(gw, pki, "down-open", "client-expired", "certificate has expired")


def test_good_answers_are_cached_so_a_stopped_responder_does_not_matter(
    gw: GatewayProcess, pki: Path, responder: DevResponder
) -> None:
    stem = issue_client(pki, "client-cached").stem
    before = dict(responder.requests)
    accepted(gw, pki, "both", stem)
    assert responder.requests["ocsp"] == before.get("ocsp", 0) + 1
    the_port = responder_port(responder)
    responder.stop()
    try:
        accepted(gw, pki, "both", stem)  # OCSP answer and CRL both cached until next_update
        accepted(gw, pki, "both", stem)
        fresh = issue_client(pki, "client-uncached").stem
        refused(gw, pki, "both", fresh, "OCSP responder unreachable")
    finally:
        restart(responder, the_port)
    assert responder.requests["ocsp"] == before.get("ocsp", 0) + 1


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"wrong_key": True}, "OCSP response signature invalid"),
        ({"stale": True}, "OCSP response stale"),
        ({"drop_nonce": True}, "OCSP response without the request's nonce"),
        ({"wrong_nonce": True}, "OCSP response nonce mismatch"),
    ],
)
def test_bad_ocsp_answers_refuse_the_connection(
    gw: GatewayProcess, pki: Path, responder: DevResponder, fault: dict[str, bool], reason: str
) -> None:
    stem = issue_client(pki, f"client-{next(iter(fault))}").stem  # a new certificate: nothing cached
    responder.faults = ResponderFaults(**fault)
    refused(gw, pki, "ocsp", stem, reason)
    responder.faults = ResponderFaults()
    accepted(gw, pki, "ocsp", stem)  # the bad answer was not cached


def test_crl_file_renewed_or_revoking_is_picked_up_without_restart(
    gw: GatewayProcess, pki: Path, responder: DevResponder
) -> None:
    stem = issue_client(pki, "client-filecrl").stem
    accepted(gw, pki, "crl-file", stem)
    revoke(pki, f"{stem}.crt")  # rewrites crl.pem
    refused(gw, pki, "crl-file", stem, "client certificate revoked (CRL)")
    original = (pki / "crl.pem").read_bytes()
    try:
        responder.faults = ResponderFaults(crl_stale=True)
        from cryptography.hazmat.primitives import serialization

        (pki / "crl.pem").write_bytes(responder.crl().public_bytes(serialization.Encoding.PEM))
        refused(gw, pki, "crl-file", "client", "CRL expired")
    finally:
        (pki / "crl.pem").write_bytes(original)
    accepted(gw, pki, "crl-file", "client")


def test_depth_two_refuses_a_client_under_a_revoked_intermediate(gw: GatewayProcess, pki: Path) -> None:
    accepted(gw, pki, "chain-depth2", "chain-client")
    refused(
        gw,
        pki,
        "chain-depth2",
        "chain-client-of-revoked",
        "CA certificate 'ferryman revoked intermediate CA' revoked",
    )
    accepted(gw, pki, "chain-depth1", "chain-client-of-revoked")  # only the leaf is checked at depth 1
    accepted(gw, pki, "chain-depth1", "chain-client")
    # the default checks the whole chain: a client under a revoked intermediate CA is refused
    accepted(gw, pki, "chain-default", "chain-client")
    refused(
        gw,
        pki,
        "chain-default",
        "chain-client-of-revoked",
        "CA certificate 'ferryman revoked intermediate CA' revoked",
    )


def test_responder_command_serves_ocsp_and_crls_and_certs_revoke(tmp_path: Path) -> None:
    """``ferryman responder DIR`` as its own process; ``ferryman certs DIR --revoke`` seen at once."""
    import base64
    import signal
    import subprocess
    import sys
    import urllib.request

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ferryman.protocols.tls import ocsp
    from tests.servers import free_port, wait_port

    p = free_port()
    base = f"http://127.0.0.1:{p}"
    cli = [sys.executable, "-m", "ferryman"]
    made = subprocess.run(
        [
            *cli,
            "certs",
            str(tmp_path),
            "--chain",
            "--ocsp-url",
            f"{base}/ocsp",
            "--crl-url",
            f"{base}/crl.pem",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert str(tmp_path / "chain-ca-bundle.crt") in made.stdout
    proc = subprocess.Popen(
        [*cli, "responder", str(tmp_path), "--address", f"127.0.0.1:{p}"], stderr=subprocess.PIPE
    )
    try:
        wait_port(p, proc=proc)
        ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
        client = x509.load_pem_x509_certificate((tmp_path / "client.crt").read_bytes())

        def status(get: bool) -> str:
            request = ocsp.build_request(client, ca, b"0123456789abcdef")
            body = request.public_bytes(serialization.Encoding.DER)
            if get:
                url = f"{base}/ocsp/" + base64.urlsafe_b64encode(body).decode()
                der = urllib.request.urlopen(url, timeout=5).read()
            else:
                req = urllib.request.Request(f"{base}/ocsp", data=body, method="POST")
                der = urllib.request.urlopen(req, timeout=5).read()
            return ocsp.verify_response(der, request, ca, b"0123456789abcdef").status.name

        assert status(get=False) == "GOOD"
        crl = x509.load_pem_x509_crl(urllib.request.urlopen(f"{base}/crl.pem", timeout=5).read())
        assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(client.serial_number) is None
        root = x509.load_pem_x509_certificate((tmp_path / "chain-root.crt").read_bytes())
        chain_crl = x509.load_der_x509_crl(
            urllib.request.urlopen(f"{base}/crl/chain-root.der", timeout=5).read()
        )
        assert chain_crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
        assert len(list(chain_crl)) == 1  # the revoked intermediate

        revoked = subprocess.run([*cli, "certs", str(tmp_path), "--revoke", "client.crt"], timeout=60)
        assert revoked.returncode == 0
        assert status(get=True) == "REVOKED"
        crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())  # the offline CRL follows
        assert crl.get_revoked_certificate_by_serial_number(client.serial_number) is not None
        assert (
            subprocess.run([*cli, "certs", str(tmp_path), "--revoke", "nope.crt"], timeout=60).returncode == 1
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
