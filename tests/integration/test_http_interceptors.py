"""HTTP publish mode runs the grant's interceptors (actors/intercept.py): the example plug-in
(examples/topic-prefix-handler, a ``[[handler]]`` found through its entry point) rewrites the topic of an
HTTP publish as it does an MQTT one; an interceptor that drops a publish gets the normal 202 answer and
nothing reaches the broker. Real servers: ``ferryman run`` or an embedded gateway, mosquitto, curl."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from ferryman import Grant, HandlerActor, Session
from ferryman.actors.contracts import Direction
from ferryman.protocols.mqtt.packets import Publish
from ferryman.wiring import build_gateway, load_settings
from tests.http_support import Subscriber, curl
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, free_port

PLUGIN_CONFIG = """
[metrics]
address = ""
[[listener]]
name = "pub"
protocol = "http"
address = "127.0.0.1:{{port}}"
target = "mqtt"
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["t/#"]
subscribe = ["t/#"]
[[handler]]
name = "topic-prefix"
[handler.options]
prefix = "tenants/%u/"
[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "http-intercept-{uid}"
"""


def test_the_plugin_interceptor_rewrites_an_http_publish(gateway_factory: Any, broker: Mosquitto) -> None:
    t = uuid.uuid4().hex[:8]
    gw: GatewayProcess = gateway_factory(PLUGIN_CONFIG.format(broker=broker.port, uid=t))
    sub = Subscriber(broker.port, f"tenants/dev1/t/{t}/#").start()
    r = curl(f"http://127.0.0.1:{gw.port}/t/{t}/up", "-u", "dev1:pw1", data=b"from http")
    assert r.status == 202
    assert r.json() == {"topic": f"t/{t}/up", "qos": 1, "retain": False}  # the request's own terms
    assert sub.messages() == [f"1 0 tenants/dev1/t/{t}/up from http"]
    # the authorization judges the client's view: t/# is granted, other/... is not
    assert curl(f"http://127.0.0.1:{gw.port}/other/x", "-u", "dev1:pw1", data=b"no").status == 403


class Censor:
    """Drops publishes whose payload is ``drop``, upper-cases the others and moves them under ``seen/``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any]] = []

    def intercept(self, session: Session, packet: Any, direction: Direction) -> Any | None:
        self.seen.append((session.protocol, type(packet).__name__, direction))
        if not isinstance(packet, Publish):
            return packet
        if packet.payload == b"drop":
            return None
        return replace(packet, topic=f"seen/{packet.topic}", payload=packet.payload.upper())


CENSOR = Censor()


class Censoring(HandlerActor):
    def auth_connect(self, session: Session) -> Grant:
        return Grant(["#"], ["#"], interceptors=[CENSOR])


def test_a_dropped_http_publish_is_answered_as_delivered(broker: Mosquitto, tmp_path: Path) -> None:
    t = uuid.uuid4().hex[:8]
    port = free_port()
    cfg = tmp_path / "censor.toml"
    cfg.write_text(
        f"""
[metrics]
address = ""
[[listener]]
name = "pub"
protocol = "http"
address = "127.0.0.1:{port}"
target = "mqtt"
[auth]
handler = "allow-all"
[bridge.mqtt]
url = "tcp://127.0.0.1:{broker.port}"
client_id = "http-censor-{t}"
"""
    )
    handler = Censoring.start()
    gw = build_gateway(load_settings(cfg), handlers=[handler])
    gw.start()
    try:
        sub = Subscriber(broker.port, f"seen/{t}/#", count=1).start()
        raw = Subscriber(broker.port, f"{t}/#", count=1).start()
        dropped = curl(f"http://127.0.0.1:{port}/{t}/a", "-u", "u:p", data=b"drop")
        assert dropped.status == 202  # QoS 1: a publish would have had its PUBACK before this answer
        assert dropped.json() == {"topic": f"{t}/a", "qos": 1, "retain": False}
        # positive control: the first message under {t}/ on the broker is this marker, not the dropped one
        direct = RawClient(broker.port, 5)
        assert direct.connect(f"direct-{t}").reason_code == 0
        direct.publish(f"{t}/marker", b"m", qos=1)
        assert raw.messages() == [f"1 0 {t}/marker m"]
        direct.disconnect()
        kept = curl(f"http://127.0.0.1:{port}/{t}/b", "-u", "u:p", "-H", "X-MQTT-QoS: 0", data=b"keep")
        assert kept.status == 202
        assert kept.json() == {"topic": f"{t}/b", "qos": 0, "retain": False}
        assert sub.messages() == [f"0 0 seen/{t}/b KEEP"]  # what the interceptor made of it
        assert ("http", "Publish", Direction.UP) in CENSOR.seen
    finally:
        gw.stop()
        handler.stop()
