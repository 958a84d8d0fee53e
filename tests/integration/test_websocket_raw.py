"""The mqtt-ws listener seen frame by frame (a wsproto client): text frames, malformed MQTT, limits,
keepalive and the graceful shutdown."""

from __future__ import annotations

import signal
from typing import Any

from ferryman.protocols.mqtt.packets import Connect, Disconnect, Pingreq, Pingresp
from tests.servers import GatewayProcess, Mosquitto, uid
from tests.wsclient import WsClient

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = ""

[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "127.0.0.1:{{port0}}"
target = "tcp://127.0.0.1:{broker}"
path_prefix = "/mqtt"
keepalive_factor = 1.0

[[listener]]
name = "ws-limited"
protocol = "mqtt-ws"
address = "127.0.0.1:{{port1}}"
target = "tcp://127.0.0.1:{broker}"
path_prefix = "/mqtt"
max_connections = 1

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
"""


def start(gateway_factory: Any, broker: Mosquitto) -> GatewayProcess:
    gw: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port), ports=2)
    return gw


def test_text_frame_closes_with_1003_and_only_that_connection(
    gateway_factory: Any, broker: Mosquitto
) -> None:
    gw = start(gateway_factory, broker)
    other = WsClient(gw.port)
    bad = WsClient(gw.port)
    try:
        assert other.mqtt_connect(f"a-{uid()}", 5).reason_code == 0
        assert bad.mqtt_connect(f"b-{uid()}", 5).reason_code == 0
        bad.send_text("hello")
        assert bad.packets_until_close(5) == ([], 1003)
        other.send(Pingreq(), 5)
        assert isinstance(other.next_packet(5), Pingresp)
    finally:
        other.close()
        bad.close()


def test_malformed_mqtt_over_ws_closes_only_that_connection(gateway_factory: Any, broker: Mosquitto) -> None:
    gw = start(gateway_factory, broker)
    other = WsClient(gw.port)
    bad = WsClient(gw.port)
    try:
        assert other.mqtt_connect(f"a-{uid()}", 5).reason_code == 0
        assert bad.mqtt_connect(f"b-{uid()}", 5).reason_code == 0
        bad.send_bytes(b"\x00\x00")  # packet type 0 is reserved
        packets, code = bad.packets_until_close(5)
        assert [(type(p), p.reason_code) for p in packets] == [(Disconnect, 0x81)]
        assert code == 1000
        other.send(Pingreq(), 5)
        assert isinstance(other.next_packet(5), Pingresp)
    finally:
        other.close()
        bad.close()


def test_packets_split_across_frames_and_frames_holding_several_packets(
    gateway_factory: Any, broker: Mosquitto
) -> None:
    gw = start(gateway_factory, broker)
    c = WsClient(gw.port)
    try:
        from ferryman.protocols.mqtt import codec

        connect = codec.encode(
            Connect(client_id=f"s-{uid()}", protocol_level=4, username="dev1", password=b"pw1"), 4
        )
        ping = codec.encode(Pingreq(), 4)
        data = connect + ping + ping
        for i in range(0, len(data), 3):  # 3 bytes per frame
            c.send_bytes(data[i : i + 3])
        got = [c.next_packet(4) for _ in range(3)]
        assert [type(p).__name__ for p in got] == ["Connack", "Pingresp", "Pingresp"]
    finally:
        c.close()


def test_keepalive_over_ws(gateway_factory: Any, broker: Mosquitto) -> None:
    gw = start(gateway_factory, broker)
    c = WsClient(gw.port)
    try:
        c.send(
            Connect(client_id=f"k-{uid()}", protocol_level=5, keepalive=1, username="dev1", password=b"pw1"),
            5,
        )
        assert c.next_packet(5).reason_code == 0
        packets, code = c.packets_until_close(5, limit=5)  # keepalive 1 s x 1.5: closed well within 5 s
        assert [(type(p), p.reason_code) for p in packets] == [(Disconnect, 0x8D)]
        assert code == 1000
    finally:
        c.close()


def test_max_connections_over_ws(gateway_factory: Any, broker: Mosquitto) -> None:
    gw = start(gateway_factory, broker)
    first = WsClient(gw.ports[1])
    second = WsClient(gw.ports[1])
    try:
        assert first.mqtt_connect(f"m1-{uid()}", 5).reason_code == 0
        assert second.mqtt_connect(f"m2-{uid()}", 5).reason_code == 0x97  # quota exceeded
    finally:
        first.close()
        second.close()


def test_sigterm_sends_disconnect_0x8b_then_a_websocket_close(
    gateway_factory: Any, broker: Mosquitto
) -> None:
    gw = start(gateway_factory, broker)
    c = WsClient(gw.port)
    try:
        assert c.mqtt_connect(f"t-{uid()}", 5).reason_code == 0
        gw.send_signal(signal.SIGTERM)
        packets, code = c.packets_until_close(5)
        assert [(type(p), p.reason_code) for p in packets] == [(Disconnect, 0x8B)]
        assert code == 1000
    finally:
        c.close()
    assert gw.proc is not None
    assert gw.proc.wait(10) == 0  # the one SIGTERM was enough; the fixture checks the log
