"""OCSP and CRL checks (protocols/tls/ocsp.py, crl.py, revocation.py) against the development responder
(ferryman_devtools/responder.py), in process: every answer, every way a response can be wrong, caching."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ferryman.protocols.tls.revocation import RevocationChecker, RevocationRefused
from ferryman_devtools.pki_extra import issue_client, revoke
from ferryman_devtools.responder import DevResponder, ResponderFaults
from tests.revocation_support import dead_url, responder_port, start_pki_and_responder, tls_settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("revpki")


@pytest.fixture(scope="module")
def module_responder(pki: Path) -> Iterator[DevResponder]:
    r = start_pki_and_responder(pki)
    yield r
    r.stop()


@pytest.fixture
def responder(module_responder: DevResponder) -> Iterator[DevResponder]:
    module_responder.faults = ResponderFaults()
    module_responder.requests.clear()
    module_responder.next_update = dt.timedelta(hours=1)
    yield module_responder
    module_responder.faults = ResponderFaults()


def der(pki: Path, stem: str) -> bytes:
    cert = x509.load_pem_x509_certificate((pki / f"{stem}.crt").read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def refusal(checker: RevocationChecker, data: bytes) -> str:
    with pytest.raises(RevocationRefused) as info:
        checker.check(data)
    return str(info.value)


@pytest.mark.parametrize("verify", [("ocsp",), ("crl",), ("ocsp", "crl")])
def test_good_passes_revoked_and_unknown_are_refused(
    responder: DevResponder, pki: Path, verify: tuple[str, ...]
) -> None:
    checker = RevocationChecker(tls_settings(pki, verify=verify))
    checker.check(der(pki, "client"))
    reason = refusal(checker, der(pki, "client-revoked"))
    assert reason == f"client certificate revoked ({verify[0].upper()})"
    assert responder.requests["ocsp"] == (2 if "ocsp" in verify else 0)
    assert responder.requests["crl"] == (1 if "crl" in verify else 0)  # one download serves both


def test_unknown_to_the_responder_is_refused_even_when_failing_open(
    responder: DevResponder, pki: Path
) -> None:
    # a certificate the dev CA issued but the responder has no record of
    stranger = issue_client(pki, "client-stranger")
    issued = (pki / "issued.json").read_text()
    (pki / "issued.json").write_text(issued.replace('"client-stranger.crt"', '"forgotten.crt"', 1))
    import json

    data = json.loads((pki / "issued.json").read_text())
    data["forgotten.crt"]["serial"] = "1"  # the responder no longer knows the serial
    (pki / "issued.json").write_text(json.dumps(data))
    checker = RevocationChecker(tls_settings(pki, revocation_fail_open=True))
    assert refusal(checker, der(pki, stranger.stem)) == "client certificate unknown to the OCSP responder"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"wrong_key": True}, "OCSP response signature invalid"),
        ({"stale": True}, "OCSP response stale"),
        ({"drop_nonce": True}, "OCSP response without the request's nonce"),
        ({"wrong_nonce": True}, "OCSP response nonce mismatch"),
        ({"delegate_without_eku": True}, "lacks the OCSPSigning EKU"),
        ({"status": "try_later"}, "OCSP responder answered TRY_LATER"),
        ({"http_status": 503}, "OCSP responder unreachable: http://127.0.0.1"),
    ],
)
def test_bad_ocsp_answers_are_refused(
    responder: DevResponder, pki: Path, fault: dict[str, object], reason: str
) -> None:
    responder.faults = ResponderFaults(**fault)  # type: ignore[arg-type]
    checker = RevocationChecker(tls_settings(pki))
    assert reason in refusal(checker, der(pki, "client"))
    responder.faults = ResponderFaults()
    checker.check(der(pki, "client"))  # the failure was not cached: the next handshake asks again
    assert responder.requests["ocsp"] == 2


def test_bad_answers_are_accepted_when_failing_open(responder: DevResponder, pki: Path) -> None:
    responder.faults = ResponderFaults(wrong_key=True)
    RevocationChecker(tls_settings(pki, revocation_fail_open=True)).check(der(pki, "client"))
    # ... but a valid "revoked" is never let in
    responder.faults = ResponderFaults()
    checker = RevocationChecker(tls_settings(pki, revocation_fail_open=True))
    assert refusal(checker, der(pki, "client-revoked")) == "client certificate revoked (OCSP)"


def test_delegated_responder_with_ocsp_signing_eku_is_trusted(responder: DevResponder, pki: Path) -> None:
    responder.faults = ResponderFaults(delegate=True)
    checker = RevocationChecker(tls_settings(pki))
    checker.check(der(pki, "client"))
    assert refusal(checker, der(pki, "client-revoked")) == "client certificate revoked (OCSP)"


def test_without_nonce_a_nonceless_answer_is_fine(responder: DevResponder, pki: Path) -> None:
    responder.faults = ResponderFaults(drop_nonce=True)
    RevocationChecker(tls_settings(pki, ocsp_nonce=False)).check(der(pki, "client"))


def test_unreachable_and_slow_responders(responder: DevResponder, pki: Path) -> None:
    down = RevocationChecker(tls_settings(pki, ocsp_responder_url=dead_url("/ocsp")))
    assert refusal(down, der(pki, "client")).startswith("OCSP responder unreachable: ")
    responder.faults = ResponderFaults(delay=1.0)
    slow = RevocationChecker(tls_settings(pki, revocation_timeout=0.3))
    t0 = gevent.get_hub().loop.now()
    assert "OCSP responder unreachable" in refusal(slow, der(pki, "client"))
    assert gevent.get_hub().loop.now() - t0 < 0.9


def test_good_and_revoked_are_cached_and_concurrent_checks_share_one_request(
    responder: DevResponder, pki: Path
) -> None:
    checker = RevocationChecker(tls_settings(pki))
    responder.faults = ResponderFaults(delay=0.3)
    jobs = [gevent.spawn(checker.check, der(pki, "client")) for _ in range(8)]
    gevent.joinall(jobs, raise_error=True)
    assert responder.requests["ocsp"] == 1
    for _ in range(3):
        checker.check(der(pki, "client"))
        refusal(checker, der(pki, "client-revoked"))
    assert responder.requests["ocsp"] == 2  # one each for client and client-revoked


def test_ocsp_answer_is_refetched_after_next_update(responder: DevResponder, pki: Path) -> None:
    responder.next_update = dt.timedelta(seconds=1)
    checker = RevocationChecker(tls_settings(pki))
    checker.check(der(pki, "client"))
    checker.check(der(pki, "client"))
    assert responder.requests["ocsp"] == 1
    gevent.sleep(1.1)
    checker.check(der(pki, "client"))
    assert responder.requests["ocsp"] == 2


def test_revocation_at_runtime_is_seen_after_the_cache(responder: DevResponder, pki: Path) -> None:
    stem = issue_client(pki, "client-later").stem
    checker = RevocationChecker(tls_settings(pki, verify=("ocsp", "crl"), crl_file=str(pki / "crl.pem")))
    checker.check(der(pki, stem))
    revoke(pki, f"{stem}.crt")
    try:
        # crl.pem was rewritten: the file is re-read without a restart (the OCSP answer is still cached)
        assert refusal(checker, der(pki, stem)) == "client certificate revoked (CRL)"
        assert (
            refusal(RevocationChecker(tls_settings(pki)), der(pki, stem))
            == "client certificate revoked (OCSP)"
        )
    finally:
        revoke(pki, f"{stem}.crt", revoked=False)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [({"crl_wrong_key": True}, "CRL signature invalid"), ({"crl_stale": True}, "CRL expired")],
)
def test_bad_crls_are_refused(
    responder: DevResponder, pki: Path, fault: dict[str, object], reason: str
) -> None:
    responder.faults = ResponderFaults(**fault)  # type: ignore[arg-type]
    for settings in (
        tls_settings(pki, verify=("crl",)),  # distribution point
        tls_settings(pki, verify=("crl",), crl_url=f"http://127.0.0.1:{responder_port(responder)}/crl.der"),
    ):
        assert reason in refusal(RevocationChecker(settings), der(pki, "client"))


def test_crl_file_expired_or_forged_is_refused_and_a_renewed_one_picked_up(
    responder: DevResponder, pki: Path, tmp_path: Path
) -> None:
    path = tmp_path / "crl.pem"
    checker = RevocationChecker(tls_settings(pki, verify=("crl",), crl_file=str(path)))
    responder.faults = ResponderFaults(crl_stale=True)
    path.write_bytes(responder.crl().public_bytes(serialization.Encoding.PEM))
    assert refusal(checker, der(pki, "client")).startswith("CRL expired (next_update ")
    responder.faults = ResponderFaults(crl_wrong_key=True)
    path.write_bytes(responder.crl().public_bytes(serialization.Encoding.PEM) + b"\n")
    assert refusal(checker, der(pki, "client")).startswith("CRL signature invalid")
    responder.faults = ResponderFaults()
    path.write_bytes(responder.crl().public_bytes(serialization.Encoding.DER))  # DER works too
    checker.check(der(pki, "client"))
    assert refusal(checker, der(pki, "client-revoked")) == "client certificate revoked (CRL)"
    path.unlink()
    assert refusal(checker, der(pki, "client")).startswith("CRL file unreadable")


def test_crl_download_is_cached_until_next_update(responder: DevResponder, pki: Path) -> None:
    responder.next_update = dt.timedelta(seconds=1)
    checker = RevocationChecker(tls_settings(pki, verify=("crl",)))
    responder.faults = ResponderFaults(delay=0.2)
    gevent.joinall([gevent.spawn(checker.check, der(pki, "client")) for _ in range(5)], raise_error=True)
    refusal(checker, der(pki, "client-revoked"))
    assert responder.requests["crl"] == 1
    gevent.sleep(1.1)
    checker.check(der(pki, "client"))
    assert responder.requests["crl"] == 2


@pytest.mark.parametrize("verify", [("ocsp",), ("crl",)])
def test_depth_two_checks_the_intermediate(
    responder: DevResponder, pki: Path, verify: tuple[str, ...]
) -> None:
    bundle = str(pki / "chain-ca-bundle.crt")
    deep = RevocationChecker(tls_settings(pki, client_ca_file=bundle, verify=verify, verify_depth=2))
    shallow = RevocationChecker(tls_settings(pki, client_ca_file=bundle, verify=verify, verify_depth=1))
    deep.check(der(pki, "chain-client"))
    shallow.check(der(pki, "chain-client-of-revoked"))
    reason = refusal(deep, der(pki, "chain-client-of-revoked"))
    assert reason == f"CA certificate 'ferryman revoked intermediate CA' revoked ({verify[0].upper()})"
    # the root is never asked about (nobody above it could revoke it)
    RevocationChecker(tls_settings(pki, client_ca_file=bundle, verify=verify, verify_depth=16)).check(
        der(pki, "chain-client")
    )


def test_issuer_missing_from_client_ca_file_is_refused(responder: DevResponder, pki: Path) -> None:
    checker = RevocationChecker(tls_settings(pki, client_ca_file=str(pki / "chain-root.crt"), verify_depth=2))
    assert "not in client_ca_file" in refusal(checker, der(pki, "chain-client"))


def test_response_for_another_certificate_is_refused(responder: DevResponder, pki: Path) -> None:
    from ferryman.protocols.tls import ocsp as ocsp_mod

    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    client = x509.load_pem_x509_certificate((pki / "client.crt").read_bytes())
    other = x509.load_pem_x509_certificate((pki / "client-revoked.crt").read_bytes())
    asked = ocsp_mod.build_request(client, ca, None)
    answered = ocsp_mod.build_request(other, ca, None).public_bytes(serialization.Encoding.DER)
    with pytest.raises(ocsp_mod.StatusUnavailable, match="not about the certificate asked for"):
        ocsp_mod.verify_response(responder.ocsp_response(answered), asked, ca, None)
