"""Certificate logins of the static handler: on an mTLS listener a user with ``identity`` logs in with a
verified client certificate alone; passwords keep working beside it. Checked with mosquitto_pub."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from ferryman.config import SettingsError
from ferryman.protocols.mqtt.packets import Publish
from ferryman.wiring import load_settings
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto

CONFIG = """
[metrics]
address = ""
[[listener]]
name = "mqtts-mutual"
protocol = "mqtt"
address = "127.0.0.1:{{port0}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"

[auth]
handler = "static"
[[auth.users]]
username = "device-7"
identity = "client"
publish = ["%u/#"]
subscribe = ["%u/#"]
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
"""


@pytest.fixture(scope="module")
def pki(dev_pki: Path) -> Path:
    return dev_pki  # the session's dev PKI (conftest); these tests only read it


@pytest.fixture
def gw(gateway_factory: Any, broker: Mosquitto, pki: Path) -> GatewayProcess:
    gateway: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port, pki=pki), ports=1)
    return gateway


def pub(
    gw: GatewayProcess, pki: Path, topic: str, cert: str, *login: str
) -> subprocess.CompletedProcess[str]:
    args = ["mosquitto_pub", "-h", "localhost", "-p", str(gw.ports[0]), "--cafile", str(pki / "ca.crt")]
    args += ["--cert", str(pki / f"{cert}.crt"), "--key", str(pki / f"{cert}.key")]
    if login:
        args += ["-u", login[0], "-P", login[1]] if len(login) == 2 else ["-u", login[0]]
    args += ["-q", "1", "-t", topic, "-m", "by certificate", "-V", "mqttv5"]
    return subprocess.run(args, capture_output=True, text=True, timeout=20)


def watch(broker: Mosquitto, topic: str) -> RawClient:
    w = RawClient(broker.port, 5)
    assert w.connect(f"w-{uuid.uuid4().hex[:6]}").reason_code == 0
    w.subscribe(topic, qos=1)
    return w


def test_certificate_alone_logs_in_as_its_user(gw: GatewayProcess, broker: Mosquitto, pki: Path) -> None:
    w = watch(broker, "device-7/#")
    out = pub(gw, pki, "device-7/temp", "client")
    assert out.returncode == 0, out.stderr
    assert w.expect(Publish).payload == b"by certificate"
    # %u is the certificate user's name: another user's topic is refused (PUBACK 0x87)
    assert "Publish 1 failed: Not authorized" in pub(gw, pki, "dev1/temp", "client").stderr
    # the matching username may be sent along
    assert pub(gw, pki, "device-7/temp", "client", "device-7").returncode == 0


def test_certificate_does_not_lend_its_user_to_another_name(gw: GatewayProcess, pki: Path) -> None:
    out = pub(gw, pki, "device-7/temp", "client", "dev1")
    assert out.returncode != 0
    assert "not authorized" in (out.stderr + out.stdout).lower()


def test_passwords_still_work_beside_certificates(gw: GatewayProcess, broker: Mosquitto, pki: Path) -> None:
    # A topic of its own: the broker is shared, and a retained message left on dev1/x by another test
    # would otherwise reach the watcher first.
    topic = f"dev1/cert-identity/{uuid.uuid4().hex}"
    w = watch(broker, topic)
    assert pub(gw, pki, topic, "client", "dev1", "pw1").returncode == 0
    assert w.expect(Publish).topic == topic
    assert pub(gw, pki, topic, "client", "dev1", "wrong").returncode != 0


def test_identity_settings_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(
        '[[auth.users]]\nusername = "a"\nidentity = "cn"\n[[auth.users]]\nusername = "b"\nidentity = "cn"\n'
        '[[auth.users]]\nusername = "c"\n'
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env={})
    assert [(e.path, e.message) for e in caught.value.errors] == [
        ("auth.users[2].password", "missing: set password, password_hash or identity"),
        ("auth.users[1].identity", "duplicate identity 'cn' (also auth.users[0])"),
    ]
