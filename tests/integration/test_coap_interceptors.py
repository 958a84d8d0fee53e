"""A grant's interceptors on a CoAP -> MQTT listener (``target = "mqtt"``): every publish, whichever transport
read it (the datagram path for a plain POST, aiocoap's for a block-wise one), goes UP through them as an MQTT
``Publish``; an Observe registration's filter goes UP as a ``Subscribe``; every notification comes DOWN
through them before it is sent. A dropped publish is answered 2.04 as delivered and reaches nobody.

The gateway runs in this process (``build_gateway`` with a handler actor of the test, as an embedding
program would), with mosquitto and libcoap's ``coap-client-notls`` as the independent peers."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ferryman import Direction, Grant, HandlerActor, Session, build_gateway
from ferryman.protocols.mqtt.packets import Publish, Subscribe
from ferryman.wiring import load_settings
from tests.coap_support import free_udp_port
from tests.http_support import Subscriber
from tests.integration.test_coap_mqtt import _LINE, coap
from tests.servers import Mosquitto

CONFIG = """
shutdown_timeout = 3.0
[metrics]
address = ""
[[listener]]
name = "coap"
protocol = "coap"
address = "127.0.0.1:{port}"
target = "mqtt"
connect_timeout = 3.0
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["t/#"]
subscribe = ["t/#"]
[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "coap-icpt-{tag}"
"""

PREFIX = "seen/"


class Rewrite:
    """Up: topic under ``seen/``, payload upper-cased; down: ``seen/`` taken off, payload marked. A
    payload ``drop`` is dropped both ways."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def intercept(self, session: Session, packet: Any, direction: Direction) -> Any | None:
        assert session.protocol == "coap"
        if isinstance(packet, Publish):
            self.seen.append((direction.value, packet.topic))
            if packet.payload == b"drop":
                return None
            if direction is Direction.UP:
                return replace(packet, topic=PREFIX + packet.topic, payload=bytes(packet.payload).upper())
            return replace(packet, topic=packet.topic.removeprefix(PREFIX), payload=b"down:" + packet.payload)
        if isinstance(packet, Subscribe) and direction is Direction.UP:
            subs = [replace(s, topic_filter=PREFIX + s.topic_filter) for s in packet.subscriptions]
            return replace(packet, subscriptions=subs)
        return packet


class Rewriter(HandlerActor):
    def auth_connect(self, session: Session) -> Grant:
        return Grant(["#"], ["#"], interceptors=[Rewrite()])


@pytest.fixture
def coap_port(broker: Mosquitto, tmp_path: Path) -> Iterator[int]:
    cfg = tmp_path / "icpt.toml"
    cfg.write_text(CONFIG.format(port=free_udp_port(), broker=broker.port, tag=uuid.uuid4().hex[:6]))
    settings = load_settings(cfg)
    handler = Rewriter.start(settings=settings)
    gateway = build_gateway(settings, handlers=[handler])
    try:
        gateway.start()
        yield gateway.listener_address("coap")[1]
    finally:
        gateway.stop()
        handler.stop()


def _uri(port: int, path: str) -> str:
    return f"coap://127.0.0.1:{port}/{path}?auth=dev1:pw1"


def test_publishes_go_up_through_the_interceptors(coap_port: int, broker: Mosquitto, tmp_path: Path) -> None:
    t = uuid.uuid4().hex[:8]
    sub = Subscriber(broker.port, f"{PREFIX}t/{t}/#", count=2).start()
    # a plain POST (the datagram path)
    assert coap("-m", "post", "-e", "hello", _uri(coap_port, f"t/{t}/a")).code == "2.04"
    # dropped by the interceptor: answered as delivered, published nowhere
    ex = coap("-m", "post", "-e", "drop", _uri(coap_port, f"t/{t}/b"))
    assert ex.code == "2.04" and ex.last[0] == "ACK"
    # a block-wise upload (aiocoap's path, Block1 assembled first)
    (tmp_path / "body").write_text("x" * 300)
    ex = coap("-b", "64", "-m", "post", "-f", str(tmp_path / "body"), _uri(coap_port, f"t/{t}/big"))
    assert ex.code == "2.04"
    assert sub.messages() == [f"1 0 {PREFIX}t/{t}/a HELLO", f"1 0 {PREFIX}t/{t}/big {'X' * 300}"]
    # the grant still judges what the device sent, before the interceptors
    assert coap("-m", "post", "-e", "no", _uri(coap_port, f"other/{t}")).code == "4.03"


def test_observe_subscribes_and_notifies_through_the_interceptors(coap_port: int, broker: Mosquitto) -> None:
    t = uuid.uuid4().hex[:8]
    # retained on the broker before the registration: they arrive right after it, no race with the SUBSCRIBE
    for leaf, payload in (("r", "kept"), ("d", "drop")):
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-t", f"{PREFIX}t/{t}/{leaf}", "-m", payload, "-r"],
            check=True,
            timeout=10,
        )
    # device t/<t>/%23 -> the bridge subscribes seen/t/<t>/#
    proc = subprocess.run(
        ["coap-client-notls", "-v", "7", "-B", "5", "-s", "3", "-m", "get", _uri(coap_port, f"t/{t}/%23")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    out = proc.stdout + proc.stderr
    notes = [m.group(5) or "" for m in map(_LINE.search, out.splitlines()) if m and m.group(2) == "2.05"]
    assert notes == ["", "down:kept"], out  # the registration's answer, then the retained one rewritten
    for leaf in ("r", "d"):  # clear the retained messages
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-t", f"{PREFIX}t/{t}/{leaf}", "-n", "-r"],
            check=True,
            timeout=10,
        )
