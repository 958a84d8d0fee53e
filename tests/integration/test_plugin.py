"""The example plug-in (examples/topic-prefix-handler), found through the `ferryman.handlers` entry point,
rewrites topics both ways with an interceptor."""

from __future__ import annotations

import uuid
from importlib.metadata import entry_points

import pytest

from ferryman.protocols.mqtt.packets import Publish
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto

CONFIG = """
[metrics]
address = ""
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{{port}}"
target = "tcp://127.0.0.1:{broker}"
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
"""


def test_plugin_is_registered_through_the_entry_point() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="ferryman.handlers")}
    assert names.get("topic-prefix") == "ferryman_topic_prefix:TopicPrefixHandler"


@pytest.mark.parametrize("version", [4, 5])
def test_interceptor_rewrites_topics_both_ways(
    gateway_factory: object, broker: Mosquitto, version: int
) -> None:
    t = uuid.uuid4().hex[:8]
    gw: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port))  # type: ignore[operator]
    direct = RawClient(broker.port, 5)  # watches what reaches the broker
    assert direct.connect(f"direct-{t}").reason_code == 0
    assert direct.subscribe(f"tenants/dev1/t/{t}/up", f"tenants/dev1/t/{t}/marker", qos=1).reason_codes == [
        1,
        1,
    ]
    pub = RawClient(broker.port, 5)  # publishes straight on the broker
    assert pub.connect(f"pub-{t}").reason_code == 0

    dev = RawClient(gw.port, version)
    assert dev.connect(f"dev-{t}", "dev1", "pw1").reason_code == 0
    assert dev.subscribe(f"t/{t}/down/#", qos=1).reason_codes == [1]
    # up: the device publishes t/..., the broker sees tenants/dev1/t/...
    dev.publish(f"t/{t}/up", b"from device", qos=1)
    seen = direct.expect(Publish)
    assert (seen.topic, seen.payload) == (f"tenants/dev1/t/{t}/up", b"from device")
    # down: the broker delivers tenants/dev1/t/..., the device sees t/...
    pub.publish(f"tenants/dev1/t/{t}/down/x", b"to device", qos=1)
    got = [p for p in dev.drain(1.0) if isinstance(p, Publish)]
    assert [(p.topic, p.payload) for p in got] == [(f"t/{t}/down/x", b"to device")]
    # the authorization handler judges the device's view: t/# is granted, other/... is not
    if version == 5:
        assert dev.publish("other/x", b"no", qos=1).reason_code == 0x87
    assert dev.subscribe("other/#").reason_codes == [0x87 if version == 5 else 0x80]
    # unsubscribe is rewritten too: after it nothing more arrives
    dev.unsubscribe(f"t/{t}/down/#")
    pub.publish(f"tenants/dev1/t/{t}/down/y", b"after unsubscribe", qos=1)
    pub.publish(f"tenants/dev1/t/{t}/marker", b"m", qos=1)
    marker = direct.expect(Publish)  # positive control: the broker delivered what came after
    assert marker.topic == f"tenants/dev1/t/{t}/marker"
    assert [p for p in dev.drain(0.5) if isinstance(p, Publish)] == []
    dev.disconnect()
    direct.disconnect()
    pub.disconnect()


def test_plugin_refuses_usernames_that_cannot_make_a_namespace(
    gateway_factory: object, broker: Mosquitto
) -> None:
    cfg = CONFIG.format(broker=broker.port).replace('handler = "static"', 'handler = "allow-all"')
    gw: GatewayProcess = gateway_factory(cfg)  # type: ignore[operator]
    assert RawClient(gw.port, 5).connect("x", "a/b", "pw").reason_code == 0x87
    assert RawClient(gw.port, 5).connect("y").reason_code == 0x87
    assert RawClient(gw.port, 5).connect("z", "alice", "pw").reason_code == 0
