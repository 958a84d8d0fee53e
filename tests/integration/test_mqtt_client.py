"""The bridge's own MQTT session (``MqttBridgeClient``) against a real mosquitto: subscribe and receive,
publish with PUBACK, reconnect and re-subscribe after a broker restart, the persistent session across an
actor restart, unsubscribe, and the bounded queue while disconnected."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pykka
import pytest

from ferryman.actors.contracts import Message
from ferryman.protocols.mqtt.bridge_client import MqttBridgeClient, parse_url
from ferryman.protocols.mqtt.packets import Publish
from tests.rawclient import RawClient
from tests.servers import Mosquitto, free_port, uid

TIMEOUT = 10.0


def eventually(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        gevent.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Collector:
    """The sink: records every Message the actor delivers."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.messages if topic is None or m.topic == topic]

    def wait_payload(self, payload: bytes, timeout: float = TIMEOUT) -> Message:
        eventually(lambda: payload in self.payloads(), f"{payload!r} at the sink", timeout)
        return next(m for m in self.messages if m.payload == payload)


@pytest.fixture
def start_client() -> Iterator[Callable[..., Any]]:
    """Starts MqttBridgeClients and returns their proxies; every one still alive is stopped at teardown."""
    refs: list[pykka.ActorRef[Any]] = []

    def start(port: int, client_id: str, sink: Collector, **kwargs: Any) -> Any:
        kwargs.setdefault("reconnect_min", 0.1)
        kwargs.setdefault("reconnect_max", 1.0)
        kwargs.setdefault("ack_timeout", 5.0)
        kwargs.setdefault("publish_timeout", 5.0)
        ref = MqttBridgeClient.start(f"tcp://127.0.0.1:{port}", client_id, sink, **kwargs)
        refs.append(ref)
        return ref.proxy()

    yield start
    for ref in refs:
        if ref.is_alive():
            ref.stop(timeout=TIMEOUT)


def connected(client: Any) -> None:
    eventually(lambda: bool(client.is_connected().get(timeout=TIMEOUT)), "the client to connect")


def publisher(port: int) -> RawClient:
    c = RawClient(port, version=5)
    assert c.connect(f"pub-{uid()}").reason_code == 0
    return c


def test_parse_url() -> None:
    assert parse_url("tcp://broker:1884") == ("broker", 1884)
    assert parse_url("mqtt://broker") == ("broker", 1883)
    with pytest.raises(ValueError):
        parse_url("ws://broker:80")


def test_subscribe_receives_and_publish_reaches_a_direct_subscriber(
    broker: Mosquitto, start_client: Callable[..., Any]
) -> None:
    sink = Collector()
    client = start_client(broker.port, f"bridge-{uid()}", sink)
    connected(client)
    base = f"mc/{uid()}"
    assert client.subscribe(f"{base}/in/#").get(timeout=TIMEOUT) is True
    assert client.filters().get(timeout=TIMEOUT) == {f"{base}/in/#": 1}

    pub = publisher(broker.port)
    try:
        pub.publish(f"{base}/in/a", b"hello", qos=1)
        got = sink.wait_payload(b"hello")
        assert got.kind == "mqtt.message" and got.topic == f"{base}/in/a"
        assert got.headers["qos"] == "1" and got.headers["retain"] == "0"
    finally:
        pub.disconnect()

    direct = publisher(broker.port)
    try:
        assert direct.subscribe(f"{base}/out", qos=1).reason_codes == [1]
        assert client.publish(f"{base}/out", b"from-bridge").get(timeout=TIMEOUT) is True
        packet = direct.expect(Publish, timeout=TIMEOUT)
        assert (packet.topic, packet.payload, packet.qos) == (f"{base}/out", b"from-bridge", 1)
    finally:
        direct.disconnect()


def test_broker_restart_reconnects_and_resubscribes(tmp_path: Path, start_client: Callable[..., Any]) -> None:
    m = Mosquitto(tmp_path / "restart", port=free_port())  # project config: persistence false
    m.start()
    try:
        sink = Collector()
        client = start_client(m.port, f"bridge-{uid()}", sink)
        connected(client)
        assert client.subscribe("restart/#").get(timeout=TIMEOUT) is True
        before = client.connect_count().get(timeout=TIMEOUT)

        def is_up() -> bool:
            return bool(client.is_connected().get(timeout=TIMEOUT))

        def count() -> int:
            return int(client.connect_count().get(timeout=TIMEOUT))

        m.stop()
        eventually(lambda: not is_up(), "the client to notice the broker went")
        m.start()  # same port, empty broker: the session and its subscription are gone
        eventually(lambda: count() > before and is_up(), "the client to reconnect")
        assert client.filters().get(timeout=TIMEOUT) == {"restart/#": 1}

        # The re-subscription's SUBACK may still be on its way: publish until one arrives (bounded).
        pub = publisher(m.port)
        try:
            deadline = time.monotonic() + TIMEOUT
            n = 0
            while not any(p.startswith(b"after-") for p in sink.payloads()):
                assert time.monotonic() < deadline, "no message reached the sink after the restart"
                pub.publish("restart/x", f"after-{n}".encode(), qos=1)
                n += 1
                gevent.sleep(0.1)
        finally:
            pub.disconnect()
    finally:
        m.stop()


def test_persistent_session_gets_messages_queued_while_away(
    tmp_path: Path, start_client: Callable[..., Any]
) -> None:
    m = Mosquitto(tmp_path / "persist", port=free_port())  # sessions live in memory while it runs
    m.start()
    try:
        client_id = f"bridge-{uid()}"
        first = Collector()
        client = start_client(m.port, client_id, first, session_expiry=300)
        connected(client)
        assert client.subscribe("persist/#").get(timeout=TIMEOUT) is True
        client.actor_ref.stop(timeout=TIMEOUT)
        m.wait_dropped(client_id)

        pub = publisher(m.port)
        try:
            for i in range(3):
                pub.publish(f"persist/{i}", f"queued-{i}".encode(), qos=1)
        finally:
            pub.disconnect()

        second = Collector()
        start_client(m.port, client_id, second, session_expiry=300)  # subscribes to nothing itself
        for i in range(3):
            second.wait_payload(f"queued-{i}".encode())
        assert first.payloads() == []
    finally:
        m.stop()


def test_unsubscribe_stops_delivery(broker: Mosquitto, start_client: Callable[..., Any]) -> None:
    sink = Collector()
    client = start_client(broker.port, f"bridge-{uid()}", sink)
    connected(client)
    base = f"unsub/{uid()}"
    assert client.subscribe(f"{base}/gone").get(timeout=TIMEOUT) is True
    assert client.subscribe(f"{base}/kept").get(timeout=TIMEOUT) is True
    assert client.unsubscribe(f"{base}/gone").get(timeout=TIMEOUT) is True
    assert client.filters().get(timeout=TIMEOUT) == {f"{base}/kept": 1}

    pub = publisher(broker.port)
    try:
        pub.publish(f"{base}/gone", b"must-not-arrive", qos=1)
        pub.publish(f"{base}/kept", b"control", qos=1)  # same publisher, same subscriber: arrives after
        sink.wait_payload(b"control")
    finally:
        pub.disconnect()
    assert b"must-not-arrive" not in sink.payloads()


def test_disconnected_client_remembers_filters_and_bounds_its_queue(
    start_client: Callable[..., Any],
) -> None:
    sink = Collector()
    client = start_client(free_port(), f"bridge-{uid()}", sink, max_queued=2)  # nothing listens there
    assert client.is_connected().get(timeout=TIMEOUT) is False
    assert client.subscribe("later/#").get(timeout=TIMEOUT) is False  # remembered, subscribed on connect
    assert client.filters().get(timeout=TIMEOUT) == {"later/#": 1}
    queued = [client.publish_async("later/x", b"%d" % i).get(timeout=TIMEOUT) for i in range(2)]
    assert not any(d.done for d in queued)
    overflow = client.publish_async("later/x", b"overflow").get(timeout=TIMEOUT)
    assert overflow.done and overflow.wait(0) is False and overflow.reason == "queue full"
    assert client.publish("later/x", b"qos0", qos=0).get(timeout=TIMEOUT) is False


def test_a_filter_wanted_by_two_owners_is_subscribed_once_and_kept_for_the_last(
    broker: Mosquitto, start_client: Callable[..., Any]
) -> None:
    """The XMPP and the CoAP bridge share one MQTT session: when both want a filter, the second gets no
    second SUBSCRIBE (the retained message is not delivered twice), and the first one leaving does not
    unsubscribe the other's filter. Only the last owner's unsubscribe stops delivery."""
    base = f"owners/{uid()}"
    pub = publisher(broker.port)
    sink = Collector()
    client = start_client(broker.port, f"bridge-{uid()}", sink)
    connected(client)
    try:
        pub.publish(f"{base}/r", b"retained", qos=1, retain=True)
        assert client.subscribe(f"{base}/#", owner="coap").get(timeout=TIMEOUT) is True
        sink.wait_payload(b"retained")
        assert client.subscribe(f"{base}/#", owner="xmpp").get(timeout=TIMEOUT) is True
        assert client.unsubscribe(f"{base}/#", owner="coap").get(timeout=TIMEOUT) is True
        assert client.filters().get(timeout=TIMEOUT) == {f"{base}/#": 1}
        pub.publish(f"{base}/a", b"still for xmpp", qos=1)
        sink.wait_payload(b"still for xmpp")
        assert client.unsubscribe(f"{base}/#", owner="xmpp").get(timeout=TIMEOUT) is True
        assert client.filters().get(timeout=TIMEOUT) == {}
        pub.publish(f"{base}/a", b"nobody wants this", qos=1)
        pub.publish(f"{base}/r", b"", qos=1, retain=True)  # clear the retained message
        client.subscribe(f"{base}/control").get(timeout=TIMEOUT)
        pub.publish(f"{base}/control", b"control", qos=1)  # same publisher: arrives after the others
        sink.wait_payload(b"control")
    finally:
        pub.disconnect()
    assert sink.payloads(f"{base}/r") == [b"retained"]  # once: the second owner sent no SUBSCRIBE
    assert b"nobody wants this" not in sink.payloads()
