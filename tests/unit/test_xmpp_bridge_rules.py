"""The XMPP bridge's rule-set plumbing with a rule set of the test's own (no servers: the XMPP and MQTT
sessions are recording actors): a rule set claims its commands through the Router, subscribes a JID
through the bridge (checked by the JID's grant, listed, persisted), gets that subscription's messages for
the JID instead of the plain rendering, and loses them when the JID subscribes plainly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from ferryman.actors.contracts import Message
from ferryman.actors.handler import HandlerChain
from ferryman.actors.router import Router
from ferryman.actors.rules import RuleActor
from ferryman.bridge.authz import BridgeAuthz, XmppJidHandler
from ferryman.bridge.store import Store
from ferryman.bridge.xmpp_mqtt import (
    MQTT_MESSAGE,
    XMPP_CHAT,
    XMPP_COMMAND,
    XMPP_RULE_DELIVER,
    XMPP_RULE_REPLAY,
    XMPP_SUBSCRIBE,
    XMPP_SUBSCRIBED,
    XmppMqttBridge,
)

ALICE = "alice@localhost"


class Fakes(pykka.ThreadingActor):
    """The XMPP session (send_chat) and the bridge's MQTT session (subscribe / unsubscribe)."""

    def __init__(self) -> None:
        super().__init__()
        self.chats: list[tuple[str, str]] = []
        self.filters: list[str] = []

    def send_chat(self, to: str, body: str, sender: str | None = None) -> None:
        self.chats.append((to, body))

    def subscribe(self, topic_filter: str, qos: int = 1, owner: str = "") -> bool:
        self.filters.append(topic_filter)
        return True

    def unsubscribe(self, topic_filter: str, owner: str = "") -> bool:
        self.filters.remove(topic_filter)
        return True

    def state(self) -> tuple[list[tuple[str, str]], list[str]]:
        return list(self.chats), list(self.filters)


class Echo(RuleActor):
    """A rule set: ``watch <topic>`` subscribes the JID for it; its messages come back as ``echo ...``."""

    def __init__(self, router: pykka.ActorRef[Any], xmpp: pykka.ActorRef[Any]) -> None:
        super().__init__(router=router)
        self.xmpp = xmpp.proxy()
        self.got: list[Message] = []

    def handle(self, message: Message) -> None:
        self.got.append(message)
        if message.kind == XMPP_COMMAND:
            topic = message.payload.decode().split()[1]
            headers = {"jid": message.topic, "rule": "echo"}
            self.router.proxy().route(Message(XMPP_SUBSCRIBE, topic, headers=headers))
        elif message.kind == XMPP_RULE_DELIVER:
            for jid in message.headers["jids"].split("\n"):
                self.xmpp.send_chat(jid, f"echo {message.topic} {message.payload.decode()}")

    def kinds(self) -> list[str]:
        return [m.kind for m in self.got]


@pytest.fixture
def world() -> Iterator[tuple[Any, Any, Any]]:
    router = Router.start()
    fakes = Fakes.start()
    jids = XmppJidHandler.start(authz=BridgeAuthz([ALICE], {ALICE: (["#"], ["a/#"])}))
    bridge = XmppMqttBridge.start(
        xmpp=fakes, mqtt=fakes, store=Store(":memory:"), chain=HandlerChain([jids]), router=router
    )
    echo = Echo.start(router, fakes)
    rp = router.proxy()
    for kind in (XMPP_CHAT, XMPP_COMMAND, XMPP_SUBSCRIBE, XMPP_RULE_REPLAY, MQTT_MESSAGE):
        rp.register(kind, bridge).get()
    rp.register(XMPP_COMMAND, echo, match=lambda m: m.payload.startswith(b"watch"), claim=True).get()
    for kind in (XMPP_SUBSCRIBED, XMPP_RULE_DELIVER):
        rp.register(kind, echo, match=lambda m: m.headers.get("rule") == "echo").get()
    yield rp, fakes.proxy(), echo.proxy()
    for ref in (echo, bridge, jids, fakes, router):
        ref.stop()


def until(check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + 5
    while not (answer := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return answer


def test_a_rule_set_through_the_router(world: tuple[Any, Any, Any]) -> None:
    rp, fakes, echo = world

    def chats() -> list[str]:
        return [body for to, body in fakes.state().get()[0] if to == ALICE]

    rp.route(Message(XMPP_CHAT, ALICE + "/phone", b"watch b/1"))  # the grant refuses b/#
    assert until(chats) == ["error: not allowed to subscribe to b/1"]
    rp.route(Message(XMPP_CHAT, ALICE, b"watch a/1"))
    until(lambda: XMPP_SUBSCRIBED in echo.kinds().get())
    assert fakes.state().get()[1] == ["a/1"]
    rp.route(Message(XMPP_CHAT, ALICE, b"list"))  # not claimed: the bridge answers; it lists a/1
    until(lambda: len(chats()) == 2)
    assert chats()[-1] == "a/1"
    rp.route(Message(MQTT_MESSAGE, "a/1", b"v1"))
    until(lambda: len(chats()) == 3)
    assert chats()[-1] == "echo a/1 v1"  # the rule set's rendering, not the plain one
    rp.route(Message(XMPP_CHAT, ALICE, b"subscribe a/1"))  # the last command decides: plain again
    until(lambda: len(chats()) == 4)
    rp.route(Message(MQTT_MESSAGE, "a/1", b"v2"))
    until(lambda: len(chats()) == 5)
    assert chats()[-2:] == ["subscribed a/1", "a/1: v2"]
    assert echo.kinds().get().count(XMPP_RULE_DELIVER) == 1
