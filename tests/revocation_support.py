"""Helpers for the revocation tests: a development PKI whose certificates point at an in-process
responder on a free port, settings for RevocationChecker, and mosquitto_pub over mTLS."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ferryman_devtools.pki import write_dev_pki
from ferryman_devtools.pki_extra import write_chain_pki
from ferryman_devtools.responder import DevResponder, ResponderFaults
from tests.servers import GatewayProcess, free_port


def start_pki_and_responder(directory: Path) -> DevResponder:
    """A dev PKI (plus the chain files) in ``directory`` whose AIA / CDP name a responder started here."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    write_dev_pki(directory, ocsp_url=f"{base}/ocsp", crl_url=f"{base}/crl.pem")
    write_chain_pki(directory)
    responder = DevResponder(directory)
    responder.start(("127.0.0.1", port))
    return responder


def responder_port(responder: DevResponder) -> int:
    return int(responder.server.address[1])


def restart(responder: DevResponder, port: int) -> None:
    responder.stop()
    responder.faults = ResponderFaults()
    responder.start(("127.0.0.1", port))


def tls_settings(pki: Path, **overrides: Any) -> SimpleNamespace:
    """What RevocationChecker reads from ``[listener.tls]``, with the schema's defaults."""
    values: dict[str, Any] = {
        "cert_file": str(pki / "server.crt"),
        "key_file": str(pki / "server.key"),
        "client_ca_file": str(pki / "ca.crt"),
        "verify": ("ocsp",),
        "ocsp_responder_url": "",
        "crl_file": "",
        "crl_url": "",
        "verify_depth": 16,
        "revocation_timeout": 3.0,
        "revocation_fail_open": False,
        "ocsp_nonce": True,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def dead_url(path: str) -> str:
    """A URL on a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}{path}"


def pub(port: int, pki: Path, client: str | None, topic: str = "tls/rev") -> subprocess.CompletedProcess[str]:
    """One QoS 1 publish with mosquitto_pub over mTLS (``client`` = a certificate stem in ``pki``)."""
    args = ["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile", str(pki / "ca.crt")]
    if client:
        args += ["--cert", str(pki / f"{client}.crt"), "--key", str(pki / f"{client}.key")]
    args += ["-u", "dev1", "-P", "pw1", "-q", "1", "-t", topic, "-m", "x", "-V", "mqttv5"]
    return subprocess.run(args, capture_output=True, text=True, timeout=20)


class LogWindow:
    """The part of a gateway's log written after a point, to tie a log line to one client's attempt."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.start = len(gw.stderr())

    def text(self) -> str:
        return self.gw.stderr()[self.start :]

    def wait_for(self, needle: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged; new log:\n{self.text()[-3000:]}")
