"""TLS and mTLS on the MQTT listener, checked from outside with mosquitto_pub and the dev PKI of
`ferryman certs` (revocation checks come later)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from ferryman.protocols.mqtt.packets import Publish
from ferryman_devtools.pki import write_dev_pki
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto

CONFIG = """
[metrics]
address = ""
[[listener]]
name = "mqtts"
protocol = "mqtt"
address = "127.0.0.1:{{port0}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"

[[listener]]
name = "mqtts-mutual"
protocol = "mqtt"
address = "127.0.0.1:{{port1}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"

[[listener]]
name = "mqtts-crl"
protocol = "mqtt"
address = "127.0.0.1:{{port2}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"
verify = ["crl"]
crl_file = "{pki}/crl.pem"

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["tls/#"]
subscribe = ["tls/#"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    write_dev_pki(directory)
    return directory


@pytest.fixture
def gw(gateway_factory: Any, broker: Mosquitto, pki: Path) -> GatewayProcess:
    gateway: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port, pki=pki), ports=3)
    return gateway


def pub(
    port: int, pki: Path, topic: str, *client: str, password: str = "pw1"
) -> subprocess.CompletedProcess[str]:
    args = ["mosquitto_pub", "-h", "localhost", "-p", str(port), "--cafile", str(pki / "ca.crt")]
    if client:
        args += ["--cert", str(pki / f"{client[0]}.crt"), "--key", str(pki / f"{client[0]}.key")]
    args += ["-u", "dev1", "-P", password, "-q", "1", "-t", topic, "-m", "over tls", "-V", "mqttv5"]
    return subprocess.run(args, capture_output=True, text=True, timeout=20)


def watcher(broker: Mosquitto, topic: str) -> RawClient:
    w = RawClient(broker.port, 5)
    assert w.connect(f"w-{uuid.uuid4().hex[:6]}").reason_code == 0
    w.subscribe(topic, qos=1)
    return w


def test_tls_listener_carries_mqtt(gw: GatewayProcess, broker: Mosquitto, pki: Path) -> None:
    t = f"tls/{uuid.uuid4().hex[:6]}"
    w = watcher(broker, t)
    out = pub(gw.ports[0], pki, t)
    assert out.returncode == 0, out.stderr
    got = w.expect(Publish)
    assert (got.topic, got.payload) == (t, b"over tls")


def test_mtls_accepts_a_client_of_the_ca_and_knows_who_it_is(
    gw: GatewayProcess, broker: Mosquitto, pki: Path
) -> None:
    t = f"tls/{uuid.uuid4().hex[:6]}"
    w = watcher(broker, t)
    assert pub(gw.ports[1], pki, t, "client").returncode == 0
    assert w.expect(Publish).payload == b"over tls"
    # the verified identity is on the Session handlers see (here: in the log of a refused CONNECT)
    assert pub(gw.ports[1], pki, t, "client", password="wrong").returncode != 0
    assert "identity='client'" in gw.stderr()


@pytest.mark.parametrize("client", ["", "client-unknown", "client-expired"])
def test_mtls_refuses_at_the_handshake(gw: GatewayProcess, broker: Mosquitto, pki: Path, client: str) -> None:
    t = f"tls/{uuid.uuid4().hex[:6]}"
    w = watcher(broker, t)
    out = pub(gw.ports[1], pki, t, *([client] if client else []))
    assert out.returncode != 0
    assert w.drain(0.5) == []  # nothing reached the broker
    assert "TLS handshake with" in gw.stderr()


def test_plain_mqtt_on_a_tls_port_is_refused(gw: GatewayProcess) -> None:
    c = RawClient(gw.ports[0], 4)
    c.send_raw(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
    assert c.closed_within(5)
    assert c.inbox == []


def test_crl_refuses_the_revoked_client_and_admits_the_good_one(
    gw: GatewayProcess, broker: Mosquitto, pki: Path
) -> None:
    t = f"tls/{uuid.uuid4().hex[:6]}"
    w = watcher(broker, t)
    assert pub(gw.ports[2], pki, t, "client-revoked").returncode != 0
    assert w.drain(0.5) == []
    assert "revoked" in gw.stderr()  # OpenSSL's reason, logged with the refusal
    assert pub(gw.ports[2], pki, t, "client").returncode == 0
    assert w.expect(Publish).payload == b"over tls"
    # without the CRL check the same revoked certificate is let in: the check is what refuses it
    assert pub(gw.ports[1], pki, t, "client-revoked").returncode == 0
