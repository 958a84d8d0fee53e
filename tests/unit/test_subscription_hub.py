"""The one subscription hub (actors/subscriptions.py) and its three users: the XMPP registry, the CoAP
bridge's receivers and the bridge MQTT session's owners (the last two with a stand-in session actor)."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

from ferryman.actors.contracts import Message
from ferryman.actors.subscriptions import SubscriptionHub
from ferryman.bridge.coap_mqtt import MQTT_MESSAGE, CoapMqttBridge
from ferryman.bridge.subscriptions import SubscriptionRegistry


def test_first_holder_and_last_holder_are_told() -> None:
    hub: SubscriptionHub[int] = SubscriptionHub()
    assert hub.add(1, "a/+") is True
    assert hub.add(2, "a/+") is False
    assert hub.add(1, "a/+") is False  # already held: nothing changes
    assert hub.count("a/+") == 2
    assert hub.holders_of("a/+") == {1, 2}
    assert hub.holders_of("a/b") == frozenset()  # exactly this filter: nobody
    assert hub.remove(1, "a/+") is False
    assert hub.remove(1, "a/+") is False  # not held any more
    assert hub.remove(2, "a/+") is True
    assert hub.filters() == frozenset() and hub.holders() == frozenset()
    assert len(hub) == 0 and not hub


def test_holders_for_matches_exact_and_wildcard_filters_once_each() -> None:
    hub: SubscriptionHub[str] = SubscriptionHub()
    hub.load({"a": ["dev/1/t", "dev/+/t"], "b": ["dev/#"]})
    hub.load([("c", "other")])
    assert hub.holders_for("dev/1/t") == {"a", "b"}
    assert hub.holders_for("dev/2/h") == {"b"}
    assert hub.holders_for("other") == {"c"}
    assert hub.holders_for("nothing") == frozenset()
    assert len(hub) == 4
    assert hub.filters_of("a") == {"dev/1/t", "dev/+/t"}


def test_the_memo_follows_changes() -> None:
    hub: SubscriptionHub[str] = SubscriptionHub()
    hub.add("a", "x/#")
    assert hub.holders_for("x/1") == {"a"}
    hub.add("b", "x/1")
    assert hub.holders_for("x/1") == {"a", "b"}
    hub.remove("a", "x/#")
    assert hub.holders_for("x/1") == {"b"}
    assert hub.remove_holder("b") == ["x/1"]
    assert hub.holders_for("x/1") == frozenset()


def test_an_invalid_filter_is_refused() -> None:
    hub: SubscriptionHub[str] = SubscriptionHub()
    with pytest.raises(ValueError):
        hub.add("a", "a/#/b")
    assert not hub


def test_the_xmpp_registry_is_the_hub() -> None:
    r = SubscriptionRegistry()
    assert isinstance(r, SubscriptionHub)
    r.add("alice@x", "a/#")
    assert r.jids_for("a/b") == {"alice@x"} and r.jids() == {"alice@x"} and r.all_filters() == {"a/#"}
    assert r.remove_jid("alice@x") == ["a/#"]


class FakeSession(pykka.ThreadingActor):
    """Stands in for MqttBridgeClient: records subscribe / unsubscribe with their owner."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str]] = []

    def subscribe(self, topic_filter: str, qos: int = 1, owner: str = "") -> bool:
        self.calls.append(("subscribe", topic_filter, owner))
        return True

    def unsubscribe(self, topic_filter: str, owner: str = "") -> bool:
        self.calls.append(("unsubscribe", topic_filter, owner))
        return True

    def log(self) -> list[tuple[str, str, str]]:
        return list(self.calls)


def test_the_coap_bridge_counts_receivers_in_the_hub() -> None:
    session = FakeSession.start()
    bridge = CoapMqttBridge.start(mqtt=session)
    try:
        proxy = bridge.proxy()
        got: list[tuple[str, int]] = []

        def receiver(n: int) -> Any:
            return lambda topic, payload, headers: got.append((topic, n))

        key1, first = proxy.add_receiver("s/+", receiver(1)).get(timeout=5)
        assert first is not None and first.get(timeout=5) is True
        key2, second = proxy.add_receiver("s/+", receiver(2)).get(timeout=5)
        assert second is None  # the filter was subscribed already
        key3, third = proxy.add_receiver("s/#", receiver(3)).get(timeout=5)
        assert third is not None
        assert proxy.receivers().get(timeout=5) == {"s/+": 2, "s/#": 1}
        proxy.handle(Message(kind=MQTT_MESSAGE, topic="s/1", payload=b"v", source="mqtt")).get(timeout=5)
        assert sorted(got) == [("s/1", 1), ("s/1", 2), ("s/1", 3)]
        _, refused = proxy.add_receiver("a/#/b", receiver(4)).get(timeout=5)
        assert refused is not None and refused.get(timeout=5) is False
        proxy.remove_receiver(key1).get(timeout=5)
        proxy.remove_receiver(key2).get(timeout=5)
        proxy.remove_receiver(key3).get(timeout=5)
        assert proxy.receivers().get(timeout=5) == {}
        calls = session.proxy().log().get(timeout=5)
        assert calls == [
            ("subscribe", "s/+", "coap"),
            ("subscribe", "s/#", "coap"),
            ("unsubscribe", "s/+", "coap"),
            ("unsubscribe", "s/#", "coap"),
        ]
    finally:
        bridge.stop()
        session.stop()
