"""Bad input closes that one connection (with a reason code where MQTT has one); everything else goes on."""

from __future__ import annotations

import socket
import time
import urllib.request

import gevent
import pytest

from ferryman.protocols.mqtt.packets import Connack, Disconnect, Publish
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid


@pytest.mark.parametrize(
    ("name", "garbage"),
    [
        ("qos3-publish", b"\x36\x04\x00\x01ab"),
        ("wildcard-topic", b"\x30\x05\x00\x03a/#"),
        ("invalid-utf8-topic", b"\x30\x04\x00\x02\xc3\x28"),
        ("remaining-length-5-bytes", b"\x30\xff\xff\xff\xff\x01"),
        ("second-connect", b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"),
        ("bad-subscribe-flags", b"\x80\x06\x00\x01\x00\x01a\x00"),
        ("random-bytes", bytes(range(256)) * 4),
    ],
)
def test_malformed_client_is_closed_while_another_keeps_publishing(
    proxy: GatewayProcess, broker: Mosquitto, name: str, garbage: bytes
) -> None:
    t = uid()
    watcher = RawClient(broker.port, 5)
    watcher.connect(f"w-{t}")
    watcher.subscribe(f"dev1/{t}/#")
    good = RawClient(proxy.port, 4)
    assert good.connect(f"good-{t}", "dev1", "pw1").reason_code == 0
    sent = 0

    def keep_publishing() -> None:
        nonlocal sent
        for i in range(200):
            good.publish(f"dev1/{t}/n", str(i).encode(), qos=1)
            sent += 1
            gevent.sleep(0.002)

    worker = gevent.spawn(keep_publishing)
    gevent.sleep(0.05)
    bad = RawClient(proxy.port, 5)
    assert bad.connect(f"bad-{t}", "dev1", "pw1").reason_code == 0
    bad.send_raw(garbage)
    assert bad.closed_within(5), f"{name}: the bad connection was not closed"
    worker.join(timeout=30)
    assert sent == 200
    got = [p for p in watcher.drain(1.0) if isinstance(p, Publish)]
    assert [int(p.payload) for p in got] == list(range(200))  # nothing lost, in order
    good.disconnect()
    watcher.disconnect()


def test_v5_malformed_gets_disconnect_with_reason(proxy: GatewayProcess) -> None:
    c = RawClient(proxy.port, 5)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    c.send_raw(b"\x30\x06\x00\x03a/#\x00")  # wildcard in a PUBLISH topic (empty property block)
    assert c.closed_within(3)
    assert [p.reason_code for p in c.inbox if isinstance(p, Disconnect)] == [0x90]


def test_packet_before_connect_closes(proxy: GatewayProcess) -> None:
    c = RawClient(proxy.port, 4)
    c.send_raw(b"\x30\x05\x00\x01ahi")  # PUBLISH first
    assert c.closed_within(3)
    assert c.inbox == []


def test_connect_timeout_closes_silent_sockets(proxy: GatewayProcess) -> None:
    """The standard listener has connect_timeout = 1.0."""
    s = socket.create_connection(("127.0.0.1", proxy.port))
    s.settimeout(10)
    assert s.recv(10) == b""  # closed by the gateway (our own 10 s timeout would raise instead)
    s.close()


def test_oversized_packet_is_refused_before_the_body_arrives(proxy: GatewayProcess) -> None:
    """max_packet_size = 65536 on the standard listener: a header announcing more is enough to close."""
    c = RawClient(proxy.port, 5)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    c.send_raw(b"\x30\xff\xff\xff\x7f")  # PUBLISH of 268,435,455 bytes: header only, then stall
    assert c.closed_within(3)
    assert [p.reason_code for p in c.inbox if isinstance(p, Disconnect)] == [0x95]


def test_unsupported_protocol_level_gets_connack_1(proxy: GatewayProcess) -> None:
    c = RawClient(proxy.port, 4)
    c.send_raw(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00")  # level 7
    ack = c.expect(Connack)
    assert ack.reason_code == 1
    assert c.closed_within(3)


def test_metrics_and_health(proxy: GatewayProcess) -> None:
    c = RawClient(proxy.port, 4)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    c.publish("dev1/m", b"x", qos=1)
    RawClient(proxy.port, 4).connect(uid(), "dev1", "wrong")
    base = f"http://127.0.0.1:{proxy.metrics_port}"
    with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
        assert r.status == 200
        assert b'"status": "ok"' in r.read()
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    c.disconnect()

    def value(prefix: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        assert lines, prefix
        return float(lines[0].rsplit(" ", 1)[1])

    assert value('ferryman_connections_open{listener="mqtt"}') >= 1
    assert value('ferryman_connections_total{listener="mqtt"}') >= 2
    assert value('ferryman_packets_total{direction="up",listener="mqtt",type="publish"}') >= 1
    assert value('ferryman_packets_total{direction="down",listener="mqtt",type="puback"}') >= 1
    assert value('ferryman_refusals_total{listener="mqtt",reason="connect_not_authorized"}') >= 1
    assert value("ferryman_actors ") >= 3
    assert value("ferryman_greenlets ") >= 1
    assert 'ferryman_bytes_total{direction="up",listener="mqtt"}' in text


@pytest.mark.parametrize(
    ("first", "version"),
    [(0x00, 4), (0x20, 4), (0x90, 5), (0xD0, 4), (0x60, 4), (0x41, 5), (0xF0, 4), (0x38, 4), (0x36, 5)],
    ids=[
        "reserved",
        "connack",
        "suback",
        "pingresp",
        "pubrel-flags",
        "puback-flags",
        "auth-v3",
        "dup-qos0",
        "qos3",
    ],
)
def test_invalid_first_byte_is_closed_by_the_proxy_not_forwarded(
    proxy: GatewayProcess, broker: Mosquitto, first: int, version: int
) -> None:
    cid = f"inv-{uid()}"
    c = RawClient(proxy.port, version)
    assert c.connect(cid, "dev1", "pw1").reason_code == 0
    c.send_raw(bytes((first, 2, 0, 1)))
    assert c.closed_within(3)
    if version == 5:
        assert [p.reason_code for p in c.inbox if isinstance(p, Disconnect)] == [0x81]
    needle = f"invalid packet type or flags 0x{first:02x} from the client"
    deadline = time.monotonic() + 3
    while needle not in proxy.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert needle in proxy.stderr()  # the proxy refused it; the broker never had to


def test_refusals_before_the_connack_are_bounded(proxy: GatewayProcess) -> None:
    """Answers to packets sent before the broker's CONNACK are held back (the CONNACK must come first);
    a client that floods refused packets in that window is closed instead of growing that queue."""
    from ferryman.protocols.mqtt import codec
    from ferryman.protocols.mqtt.packets import Connect

    c = RawClient(proxy.port, 5)
    flood = b"".join(
        codec.encode(Publish("not/mine", b"", qos=1, packet_id=i % 65535 + 1), 5) for i in range(5000)
    )
    c.send_raw(
        codec.encode(Connect(client_id=uid(), protocol_level=5, username="dev1", password=b"pw1"), 5) + flood
    )
    assert c.closed_within(10)
