"""The bridge handler on a real mosquitto, through the Router and the bridge's own MQTT session; the XMPP
side is a recording actor here (tests with prosody come with the XMPP session actor)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pykka
import pytest

from ferryman.actors.contracts import Message
from ferryman.actors.handler import HandlerChain
from ferryman.actors.router import Router
from ferryman.bridge.authz import BridgeAuthz, XmppJidHandler
from ferryman.bridge.store import Store
from ferryman.bridge.xmpp_mqtt import MQTT_MESSAGE, XMPP_CHAT, XmppMqttBridge
from ferryman.protocols.mqtt.bridge_client import MqttBridgeClient
from ferryman.protocols.mqtt.packets import Publish
from tests.rawclient import RawClient
from tests.servers import Mosquitto


class ChatLog(pykka.ThreadingActor):
    """Stands in for the XMPP session: records what the bridge sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def send_chat(self, to: str, body: str, sender: str | None = None) -> None:
        self.sent.append((to, body))

    def messages(self) -> list[tuple[str, str]]:
        return list(self.sent)


class Bridge:
    def __init__(self, broker: Mosquitto, store_path: Path, allowed: tuple[str, ...]) -> None:
        self.router = Router.start()
        self.chat = ChatLog.start()
        route = self.router.proxy().route
        self.mqtt = MqttBridgeClient.start(
            f"tcp://127.0.0.1:{broker.port}", f"bridge-{uuid.uuid4().hex[:6]}", lambda m: route.defer(m)
        )
        self.jids = XmppJidHandler.start(authz=BridgeAuthz(allowed))  # the chain XMPP users are asked through
        self.bridge = XmppMqttBridge.start(
            xmpp=self.chat, mqtt=self.mqtt, store=Store(str(store_path)), chain=HandlerChain([self.jids])
        )
        rp = self.router.proxy()
        rp.register(XMPP_CHAT, self.bridge).get()
        rp.register(MQTT_MESSAGE, self.bridge).get()

    def say(self, jid: str, text: str) -> None:
        self.router.proxy().route(Message(XMPP_CHAT, jid, text.encode())).get()

    def wait_reply(self, jid: str, predicate: Any, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for to, body in self.chat.proxy().messages().get():
                if to == jid and predicate(body):
                    return body
            time.sleep(0.02)
        raise AssertionError(f"no matching chat to {jid}: {self.chat.proxy().messages().get()}")

    def stop(self) -> None:
        for ref in (self.bridge, self.jids, self.mqtt, self.chat, self.router):
            if ref.is_alive():
                ref.stop()


@pytest.fixture
def bridge(broker: Mosquitto, tmp_path: Path) -> Any:
    b = Bridge(broker, tmp_path / "bridge.sqlite3", ("alice@localhost", "bob@localhost"))
    yield b
    b.stop()


def test_subscribe_receive_list_unsubscribe(bridge: Bridge, broker: Mosquitto) -> None:
    t = uuid.uuid4().hex[:6]
    bridge.say("alice@localhost/phone", f"subscribe sensors{t}/+/temp")
    assert (
        bridge.wait_reply("alice@localhost", lambda b: b.startswith("subscribed"))
        == f"subscribed sensors{t}/+/temp"
    )
    bridge.say("bob@localhost", f"SUBSCRIBE sensors{t}/#")
    bridge.wait_reply("bob@localhost", lambda b: b == f"subscribed sensors{t}/#")
    pub = RawClient(broker.port, 4)
    pub.connect(f"pub-{t}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the bridge's SUBSCRIBE is asynchronous: publish until it lands
        pub.publish(f"sensors{t}/k1/temp", b"21.5", qos=1)
        try:
            bridge.wait_reply("alice@localhost", lambda b: b == f"sensors{t}/k1/temp: 21.5", timeout=0.3)
            break
        except AssertionError:
            continue
    bridge.wait_reply("bob@localhost", lambda b: b == f"sensors{t}/k1/temp: 21.5")
    pub.publish(f"sensors{t}/k1/raw", b"\xff\x00", qos=1)  # not UTF-8: base64, marked
    bridge.wait_reply("bob@localhost", lambda b: b == f"sensors{t}/k1/raw: base64:/wA=")
    bridge.say("alice@localhost", "list")
    bridge.wait_reply("alice@localhost", lambda b: b == f"sensors{t}/+/temp")  # list: one filter a line
    bridge.say("alice@localhost", f"unsubscribe sensors{t}/+/temp")
    bridge.wait_reply("alice@localhost", lambda b: b == f"unsubscribed sensors{t}/+/temp")
    bridge.say("alice@localhost", "list")
    bridge.wait_reply("alice@localhost", lambda b: b == "no subscriptions")
    pub.disconnect()


def test_refused_jid_and_help(bridge: Bridge) -> None:
    bridge.say("mallory@localhost", "subscribe a/#")
    assert bridge.wait_reply("mallory@localhost", lambda b: b.startswith("error:")).startswith("error: ")
    bridge.say("alice@localhost", "dance")
    assert "subscribe" in bridge.wait_reply(
        "alice@localhost", lambda b: "usage" in b.lower() or "help" in b.lower()
    )


def test_publish_reaches_the_broker_and_is_confirmed(bridge: Bridge, broker: Mosquitto) -> None:
    t = uuid.uuid4().hex[:6]
    watch = RawClient(broker.port, 5)
    watch.connect(f"w-{t}")
    watch.subscribe(f"out{t}/#", qos=1)
    bridge.say("alice@localhost", f"publish out{t}/cmd hello there")
    bridge.wait_reply("alice@localhost", lambda b: b == f"published out{t}/cmd", timeout=15)
    got = watch.expect(Publish)
    assert (got.topic, got.payload, got.qos) == (f"out{t}/cmd", b"hello there", 1)
    watch.disconnect()


def test_subscriptions_survive_a_restart(broker: Mosquitto, tmp_path: Path) -> None:
    t = uuid.uuid4().hex[:6]
    store = tmp_path / "persist.sqlite3"
    first = Bridge(broker, store, ("alice@localhost",))
    first.say("alice@localhost", f"subscribe keep{t}/#")
    first.wait_reply("alice@localhost", lambda b: b.startswith("subscribed"))
    first.stop()
    second = Bridge(broker, store, ("alice@localhost",))
    try:
        second.say("alice@localhost", "list")
        second.wait_reply("alice@localhost", lambda b: b == f"keep{t}/#")  # restored from SQLite
        pub = RawClient(broker.port, 4)
        pub.connect(f"p-{t}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # and subscribed again on the broker
            pub.publish(f"keep{t}/x", b"back", qos=1)
            try:
                second.wait_reply("alice@localhost", lambda b: b == f"keep{t}/x: back", timeout=0.3)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("no delivery after the restart")
        pub.disconnect()
    finally:
        second.stop()
