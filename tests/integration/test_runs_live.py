"""Floods through the gateway, so that reads hold runs (many packets, or WebSocket frames, of one shape)
and the run fast paths take them: every message arrives, once, in order, byte for byte, and a refused
packet inside a run is still refused with the right code while its neighbours pass.

Each flood goes out in one write (a run reaches the gateway in one read); the checks are made on what
independent endpoints see: a subscriber straight on mosquitto, or the device's own acknowledgements.
"""

from __future__ import annotations

from typing import Any

from wsproto.events import BytesMessage

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.packets import Puback, Publish
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid
from tests.wsclient import WsClient

CONFIG = """
[log]
level = "info"
[metrics]
address = ""

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{{port0}}"
target = "tcp://127.0.0.1:{port}"

[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "127.0.0.1:{{port1}}"
target = "ws://127.0.0.1:{ws_port}/mqtt"
path_prefix = "/mqtt"

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
"""

COUNT = 400  # messages per flood: well over RUN_MIN, and more than one read's worth over WebSocket


def start(gateway_factory: Any, ws_broker: Mosquitto) -> GatewayProcess:
    gw: GatewayProcess = gateway_factory(
        CONFIG.format(port=ws_broker.port, ws_port=ws_broker.ws_port), ports=2
    )
    return gw


def payload(i: int) -> bytes:
    return f"message {i:06d}".encode()


def watch(broker: Mosquitto, *filters: str) -> RawClient:
    """A subscriber straight on the broker, at QoS 0 (a flood must not wait for its acknowledgements)."""
    c = RawClient(broker.port, version=5)
    assert c.connect(f"watch-{uid()}").reason_code == 0
    assert c.subscribe(*filters).reason_codes == [0] * len(filters)
    return c


def received(client: RawClient, count: int) -> list[tuple[str, bytes]]:
    got = []
    for _ in range(count):
        packet = client.expect(Publish, timeout=10)
        got.append((packet.topic, packet.payload))
    return got


def test_tcp_flood_with_a_refused_publish_inside_the_run(gateway_factory: Any, ws_broker: Mosquitto) -> None:
    """MQTT 5, QoS 1: one PUBLISH to a topic of the same length but outside the ACL sits in the middle of
    the run. It gets PUBACK 0x87 from the gateway, the others the broker's 0, and only they arrive."""
    gw = start(gateway_factory, ws_broker)
    base = f"dev1/{uid()[:6]}"
    refused_at = COUNT // 2
    watcher = watch(ws_broker, "dev1/#", "devX/#")
    device = RawClient(gw.port, version=5)
    try:
        assert device.connect(f"flood-{uid()}", "dev1", "pw1").reason_code == 0
        topics = [("devX" + base[4:]) if i == refused_at else base for i in range(COUNT)]
        device.send_raw(
            b"".join(
                codec.encode(Publish(t, payload(i), qos=1, packet_id=i + 1), 5) for i, t in enumerate(topics)
            )
        )
        acks = {}
        for _ in range(COUNT):
            ack = device.expect(Puback, timeout=10)
            acks[ack.packet_id] = ack.reason_code
        assert acks == {i + 1: (0x87 if i == refused_at else 0) for i in range(COUNT)}
        expected = [(base, payload(i)) for i in range(COUNT) if i != refused_at]
        assert received(watcher, COUNT - 1) == expected
        assert watcher.drain(0.3) == []
    finally:
        device.close()
        watcher.close()


def test_tcp_flood_down_to_a_subscriber_behind_the_gateway(
    gateway_factory: Any, ws_broker: Mosquitto
) -> None:
    """MQTT 3.1.1, QoS 0 both ways: a publisher on mosquitto floods (300 KB, so the downlink's reads are
    big and it coalesces them, coalesce.py); the broker's burst reaches the gateway's downlink as runs and
    every message gets to the device behind it, in order. A lone message after the flood still arrives:
    the low-water mark does not outlive the flood."""
    gw = start(gateway_factory, ws_broker)
    topic = f"dev1/{uid()[:6]}"
    count = 3000
    device = RawClient(gw.port, version=4)
    source = RawClient(ws_broker.port, version=4)
    try:
        assert device.connect(f"sub-{uid()}", "dev1", "pw1").reason_code == 0
        assert device.subscribe("dev1/#").reason_codes == [0]
        assert source.connect(f"src-{uid()}").reason_code == 0
        body = b"x" * 80
        source.send_raw(b"".join(codec.encode(Publish(topic, payload(i) + body), 4) for i in range(count)))
        assert received(device, count) == [(topic, payload(i) + body) for i in range(count)]
        source.send(Publish(topic, b"after the flood"))
        assert received(device, 1) == [(topic, b"after the flood")]
    finally:
        device.close()
        source.close()


def test_websocket_flood_both_ways_with_random_masking_keys(
    gateway_factory: Any, ws_broker: Mosquitto
) -> None:
    """mqtt-ws to a ws:// upstream: a device sends one masked frame per PUBLISH (wsproto picks a new key
    for each) in one write; a second device subscribed through the gateway gets every message in order,
    the gateway unmasking, checking and re-framing the runs both ways."""
    gw = start(gateway_factory, ws_broker)
    port = gw.ports[1]
    topic = f"dev1/{uid()[:6]}"
    refused = "devX" + topic[4:]
    sub = WsClient(port)
    pub = WsClient(port)
    watcher = watch(ws_broker, "devX/#")
    try:
        assert sub.mqtt_connect(f"wsub-{uid()}", 4).reason_code == 0
        sub.send(codec.decode(*_subscribe_packet()), 4)
        assert sub.next_packet(4).reason_codes == [0]
        assert pub.mqtt_connect(f"wpub-{uid()}", 4).reason_code == 0
        frames = [
            pub.ws.send(BytesMessage(codec.encode(Publish(refused if i == 7 else topic, payload(i)), 4)))
            for i in range(COUNT)
        ]
        pub.sock.sendall(b"".join(frames))
        got = []
        while len(got) < COUNT - 1:
            packet = sub.next_packet(4)
            assert isinstance(packet, Publish)
            got.append((packet.topic, packet.payload))
        assert got == [(topic, payload(i)) for i in range(COUNT) if i != 7]
        assert watcher.drain(0.3) == []  # the refused one (QoS 0, MQTT 3.1.1) was dropped, not passed on
    finally:
        sub.close()
        pub.close()
        watcher.close()


def _subscribe_packet() -> tuple[int, bytes, int]:
    from ferryman.protocols.mqtt.packets import Subscribe, Subscription

    raw = codec.encode(Subscribe(1, [Subscription("dev1/#", 0)]), 4)
    return raw[0], raw[2:], 4
