"""The mqtt-ws listener with paho-mqtt over WebSocket (an independent client), against real mosquitto:
plain ws, wss and mTLS, both subprotocols, refusals in MQTT's terms, and ws:// / tcp:// upstreams."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from ferryman.protocols.mqtt.packets import Publish
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid
from tests.wsclient import UPGRADE, WsClient, http_get

TIMEOUT = 10.0

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = ""

[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "127.0.0.1:{port0}"
target = "tcp://127.0.0.1:{broker}"
path_prefix = "/mqtt"

[[listener]]
name = "wss"
protocol = "mqtt-ws"
address = "127.0.0.1:{port1}"
target = "tcp://127.0.0.1:{broker}"
path_prefix = "/mqtt"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"

[[listener]]
name = "wss-mutual"
protocol = "mqtt-ws"
address = "127.0.0.1:{port2}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"

[[listener]]
name = "ws-origin"
protocol = "mqtt-ws"
address = "127.0.0.1:{port3}"
target = "tcp://127.0.0.1:{broker}"
allowed_origins = ["https://app.example"]

[[listener]]
name = "ws-to-ws"
protocol = "mqtt-ws"
address = "127.0.0.1:{port4}"
target = "ws://127.0.0.1:{broker_ws}/mqtt"
path_prefix = "/mqtt"

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
"""


@pytest.fixture(scope="module")
def gw(
    ws_broker: Mosquitto, dev_pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    fills = {"broker": ws_broker.port, "broker_ws": ws_broker.ws_port, "pki": dev_pki}
    gateway = GatewayProcess(tmp_path_factory.mktemp("ws-gw"), CONFIG, ports=5, fills=fills)
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


class WsPaho:
    """paho-mqtt 2.x over WebSocket; connect() returns the CONNACK reason code."""

    def __init__(self, version: int, client_id: str = "", headers: dict[str, str] | None = None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"ws-{uid()}",
            protocol=version,
            transport="websockets",
        )
        self.client.ws_set_options(path="/mqtt", headers=headers)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.messages: list[mqtt.MQTTMessage] = []
        self.got_message = threading.Event()
        self.reason: ReasonCode | None = None
        self.granted: list[ReasonCode] = []
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        self.granted = codes
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.append(msg)
        self.got_message.set()

    def connect(self, port: int, user: str = "dev1", password: str = "pw1") -> ReasonCode:
        self.client.username_pw_set(user, password)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        assert self.reason is not None
        return self.reason

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.subscribed.clear()
        self.client.subscribe(topic, 1)
        assert self.subscribed.wait(TIMEOUT), "no SUBACK"
        return self.granted

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(TIMEOUT)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def tls_context(pki: Path, client: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client:
        ctx.load_cert_chain(pki / f"{client}.crt", pki / f"{client}.key")
    return ctx


def round_trip(c: WsPaho, payload: bytes) -> None:
    """Subscribe to a fresh topic, publish to it over the same connection, get it back."""
    topic = f"dev1/{uid()}"
    assert [r.value for r in c.subscribe(topic)] == [1]
    c.publish(topic, payload)
    assert c.got_message.wait(TIMEOUT), "the message did not come back"
    assert (c.messages[0].topic, c.messages[0].payload) == (topic, payload)


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_over_plain_ws(gw: GatewayProcess, ws_broker: Mosquitto, version: int) -> None:
    c = WsPaho(version)
    try:
        assert c.connect(gw.ports[0]).value == 0
        # larger than one read and than a 16-bit frame length: MQTT bytes are not aligned to frames
        round_trip(c, bytes(range(256)) * 400)
    finally:
        c.stop()


def test_paho_mqtt31_with_the_mqttv31_subprotocol(gw: GatewayProcess, ws_broker: Mosquitto) -> None:
    # paho always offers "mqtt"; an MQTT 3.1 client offering "mqttv3.1" is imitated with its header
    c = WsPaho(mqtt.MQTTv31, headers={"Sec-Websocket-Protocol": "mqttv3.1"})
    try:
        assert c.connect(gw.ports[0]).value == 0
        round_trip(c, b"over mqttv3.1")
    finally:
        c.stop()


def test_wss_and_the_tls_handshake(gw: GatewayProcess, dev_pki: Path) -> None:
    c = WsPaho(mqtt.MQTTv5)
    c.client.tls_set_context(tls_context(dev_pki))
    try:
        assert c.connect(gw.ports[1]).value == 0
        round_trip(c, b"over wss")
    finally:
        c.stop()


def test_mtls_admits_a_client_of_the_ca_and_refuses_one_without_a_certificate(
    gw: GatewayProcess, dev_pki: Path
) -> None:
    c = WsPaho(mqtt.MQTTv5)
    c.client.ws_set_options(path="/anything")  # no path_prefix on this listener: every path
    c.client.tls_set_context(tls_context(dev_pki, "client"))
    try:
        assert c.connect(gw.ports[2]).value == 0
        round_trip(c, b"over mutual tls")
    finally:
        c.stop()
    bare = WsPaho(mqtt.MQTTv5)
    bare.client.tls_set_context(tls_context(dev_pki))
    with pytest.raises((ssl.SSLError, OSError)):
        bare.client.connect("127.0.0.1", gw.ports[2])
        bare.client.loop_read()  # TLS 1.3: the refusal arrives with the first read
    assert "TLS handshake with" in gw.stderr()
    # the verified identity is on the Session (here: in the log of a refused CONNECT)
    wrong = WsPaho(mqtt.MQTTv5)
    wrong.client.tls_set_context(tls_context(dev_pki, "client"))
    try:
        assert wrong.connect(gw.ports[2], password="wrong").value == 0x87
    finally:
        wrong.stop()
    assert "protocol='mqtt-ws'" in gw.stderr() and "identity='client'" in gw.stderr()


@pytest.mark.parametrize(("version", "code"), [(mqtt.MQTTv311, 135), (mqtt.MQTTv5, 0x87)], ids=["v311", "v5"])
def test_bad_credentials_get_a_connack_over_ws(gw: GatewayProcess, version: int, code: int) -> None:
    c = WsPaho(version)
    try:
        assert c.connect(gw.ports[0], password="wrong").value == code  # paho maps 3.1.1's 5 to 135
    finally:
        c.stop()


def test_forbidden_filter_gets_suback_0x87_over_ws(gw: GatewayProcess) -> None:
    c = WsPaho(mqtt.MQTTv5)
    try:
        assert c.connect(gw.ports[0]).value == 0
        assert [r.value for r in c.subscribe("secret/#")] == [0x87]
        round_trip(c, b"still connected")
    finally:
        c.stop()


def test_upstream_ws_to_mosquittos_websockets_listener(gw: GatewayProcess, ws_broker: Mosquitto) -> None:
    topic = f"dev1/{uid()}"
    watcher = RawClient(ws_broker.port, 5)  # on the broker's plain listener: the message crossed it
    assert watcher.connect(f"w-{uid()}").reason_code == 0
    watcher.subscribe(topic, qos=1)
    c = WsPaho(mqtt.MQTTv5)
    try:
        assert c.connect(gw.ports[4]).value == 0
        c.publish(topic, b"via ws upstream")
        got = watcher.expect(Publish)
        assert (got.topic, got.payload) == (topic, b"via ws upstream")
        round_trip(c, b"and back down")
    finally:
        c.stop()
        watcher.close()
    ws_broker.wait_dropped(c.client._client_id.decode())


# ------------------------------------------------------------------------------------- HTTP refusals


def test_wrong_path_is_404(gw: GatewayProcess) -> None:
    status, body = http_get(gw.ports[0], "/other", {**UPGRADE, "Sec-WebSocket-Protocol": "mqtt"})
    assert (status, body) == (404, "no MQTT endpoint at /other\n")


def test_no_subprotocol_is_refused_with_a_reason(gw: GatewayProcess) -> None:
    status, body = http_get(gw.ports[0], "/mqtt", UPGRADE)
    assert (status, body) == (400, "offer Sec-WebSocket-Protocol mqtt or mqttv3.1\n")
    status, body = http_get(gw.ports[0], "/mqtt", {**UPGRADE, "Sec-WebSocket-Protocol": "wamp, graphql-ws"})
    assert status == 400


def test_plain_http_to_the_endpoint_is_426(gw: GatewayProcess) -> None:
    assert http_get(gw.ports[0], "/mqtt", {})[0] == 426


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(("mqtt",), "mqtt"), (("mqttv3.1",), "mqttv3.1"), (("wamp", "mqttv3.1", "mqtt"), "mqttv3.1")],
)
def test_the_offered_subprotocol_is_echoed(gw: GatewayProcess, offered: tuple[str, ...], chosen: str) -> None:
    c = WsClient(gw.ports[0], subprotocols=offered)
    try:
        assert (c.status, c.subprotocol) == (101, chosen)
    finally:
        c.close()


def test_origin_not_listed_is_403(gw: GatewayProcess) -> None:
    status, body = http_get(
        gw.ports[3], "/", {**UPGRADE, "Sec-WebSocket-Protocol": "mqtt", "Origin": "https://evil.example"}
    )
    assert status == 403 and "evil.example" in body
    ok = WsClient(gw.ports[3], path="/", origin="https://app.example")
    try:
        assert ok.status == 101
        assert ok.mqtt_connect(f"o-{uid()}", 5).reason_code == 0
    finally:
        ok.close()
