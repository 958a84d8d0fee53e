"""``tls://`` upstreams: the gateway dials mosquitto's TLS listener, which requires a client certificate
(upstream mTLS with ``[listener.target_tls]``), checked with mosquitto_pub / mosquitto_sub through it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferryman.protocols.mqtt.packets import Publish
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid

CONFIG = """
[metrics]
address = ""

[[listener]]
name = "to-tls"
protocol = "mqtt"
address = "127.0.0.1:{port0}"
target = "tls://127.0.0.1:{broker_tls}"
[listener.target_tls]
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/client.crt"
key_file = "{pki}/client.key"
server_name = "localhost"

[[listener]]
name = "to-tls-no-cert"
protocol = "mqtt"
address = "127.0.0.1:{port1}"
target = "tls://127.0.0.1:{broker_tls}"
[listener.target_tls]
ca_file = "{pki}/ca.crt"

[[listener]]
name = "to-tls-wrong-name"
protocol = "mqtt"
address = "127.0.0.1:{port2}"
target = "tls://127.0.0.1:{broker_tls}"
[listener.target_tls]
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/client.crt"
key_file = "{pki}/client.key"
server_name = "broker.example"

[[listener]]
name = "ws-to-tls"
protocol = "mqtt-ws"
address = "127.0.0.1:{port3}"
target = "tls://127.0.0.1:{broker_tls}"
[listener.target_tls]
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/client.crt"
key_file = "{pki}/client.key"
"""


@pytest.fixture(scope="module")
def gw(
    ws_broker: Mosquitto, dev_pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    fills = {"broker_tls": ws_broker.tls_port, "pki": dev_pki}
    gateway = GatewayProcess(tmp_path_factory.mktemp("tls-up"), CONFIG, ports=4, fills=fills)
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def watcher(broker: Mosquitto, topic: str) -> RawClient:
    w = RawClient(broker.port, 5)
    assert w.connect(f"w-{uid()}").reason_code == 0
    w.subscribe(topic, qos=1)
    return w


def pub(port: int, topic: str, version: str = "mqttv5") -> subprocess.CompletedProcess[str]:
    args = [
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-q",
        "1",
        "-t",
        topic,
        "-m",
        "up",
        "-V",
        version,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_pub_and_sub_through_a_tls_upstream_with_a_client_certificate(
    gw: GatewayProcess, ws_broker: Mosquitto, version: str
) -> None:
    topic = f"up/{uid()}"
    argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(gw.ports[0]), "-d", "-t", topic, "-q", "1"]
    sub = subprocess.Popen(
        ["stdbuf", "-oL", *argv, "-C", "1", "-W", "10", "-V", version],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sub.stdout is not None
        for line in sub.stdout:
            if line.startswith("Subscribed"):
                break
        w = watcher(ws_broker, topic)  # on the broker's plain port: the message went through its TLS port
        out = pub(gw.ports[0], topic, version)
        assert out.returncode == 0, out.stderr
        assert w.expect(Publish).payload == b"up"
        rest, _ = sub.communicate(timeout=15)
        assert sub.returncode == 0 and "up" in rest.splitlines()  # -d: the debug lines come with it
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()


@pytest.mark.parametrize("port_index", [1, 2], ids=["no-client-cert", "wrong-server-name"])
def test_upstream_tls_failures_refuse_the_device(
    gw: GatewayProcess, ws_broker: Mosquitto, port_index: int
) -> None:
    topic = f"up/{uid()}"
    w = watcher(ws_broker, topic)
    assert pub(gw.ports[port_index], topic).returncode != 0
    assert w.drain(0.5) == []


def test_wrong_server_name_is_a_certificate_error(gw: GatewayProcess) -> None:
    c = RawClient(gw.ports[2], 5)
    assert c.connect(f"n-{uid()}").reason_code == 0x88  # server unavailable: the target was not trusted
    assert "certificate verify failed" in gw.stderr()


def test_mqtt_ws_listener_to_a_tls_upstream(gw: GatewayProcess, ws_broker: Mosquitto) -> None:
    from tests.wsclient import WsClient

    topic = f"up/{uid()}"
    w = watcher(ws_broker, topic)
    c = WsClient(gw.ports[3], path="/")
    try:
        assert c.mqtt_connect(f"wt-{uid()}", 5, user="", password="").reason_code == 0
        c.send(Publish(topic=topic, payload=b"ws to tls", qos=0), 5)
        assert w.expect(Publish).payload == b"ws to tls"
    finally:
        c.close()
