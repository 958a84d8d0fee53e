"""smartgrid as a rule-set plug-in (no servers): found by name, started with ``start_rule``, connected to the
XMPP bridge through the Router only (its claimed GET commands, messages under its root, the bridge's
deliveries for it), and nothing of it left in the XMPP bridge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferryman.actors.contracts import Message
from ferryman.actors.router import Router
from ferryman.actors.rules import RuleActor, RuleContext
from ferryman.bridge.smartgrid_handler import SmartgridHandler
from ferryman.bridge.xmpp_mqtt import (
    MQTT_MESSAGE,
    XMPP_COMMAND,
    XMPP_RULE_DELIVER,
    XMPP_RULE_REPLAY,
    XMPP_SUBSCRIBE,
    XMPP_SUBSCRIBED,
)
from ferryman.bridge_wiring import rule_class

ROOT = Path(__file__).resolve().parents[2]


class Recorder(RuleActor):
    """Stands in for the XMPP session (send_chat) and for the bridge's catch-all routes."""

    def __init__(self) -> None:
        super().__init__()
        self.chats: list[tuple[str, str]] = []
        self.routed: list[Message] = []

    def send_chat(self, to: str, body: str, sender: str | None = None) -> None:
        self.chats.append((to, body))

    def handle(self, message: Message) -> None:
        self.routed.append(message)

    def state(self) -> tuple[list[tuple[str, str]], list[Message]]:
        return list(self.chats), list(self.routed)


@pytest.fixture
def wired() -> Iterator[tuple[Any, Any]]:
    router = Router.start()
    rec = Recorder.start()
    settings = type("S", (), {"bridge": type("B", (), {"smartgrid": type("G", (), {"root": "grid"})()})()})()
    parts = SmartgridHandler.start_rule(RuleContext(settings, router, ports={"xmpp": rec}))
    rp = router.proxy()
    for kind in (XMPP_COMMAND, XMPP_SUBSCRIBE, XMPP_RULE_REPLAY, MQTT_MESSAGE):
        rp.register(kind, rec).get()  # the bridge's routes
    yield rp, rec.proxy()
    for ref in [*parts, rec, router]:
        ref.stop()


def settle(rec: Any, want: Any) -> tuple[list[tuple[str, str]], list[Message]]:
    deadline = time.monotonic() + 5
    while True:
        state = rec.state().get()
        if want(state) or time.monotonic() > deadline:
            return state  # type: ignore[no-any-return]
        time.sleep(0.01)


def test_found_by_name() -> None:
    assert rule_class("smartgrid") is SmartgridHandler
    text = (ROOT / "pyproject.toml").read_text()
    assert 'smartgrid = "ferryman.bridge.smartgrid_handler:SmartgridHandler"' in text
    source = (ROOT / "bridge" / "xmpp_mqtt.py").read_text()
    code = source.split('"""', 2)[2]  # past the module docstring, which names it as an example
    assert "smartgrid" not in code.lower()


def test_routes(wired: tuple[Any, Any]) -> None:
    rp, rec = wired
    # GET commands are claimed: the bridge's catch-all does not get them; others are not
    assert rp.route(Message(XMPP_COMMAND, "alice@x", b"GET power from bat")).get() == 1
    assert rp.route(Message(XMPP_COMMAND, "alice@x", b"list")).get() == 1
    chats, routed = settle(rec, lambda s: any(m.kind == XMPP_SUBSCRIBE for m in s[1]))
    kinds = [(m.kind, m.topic) for m in routed]
    assert (XMPP_COMMAND, "list") not in kinds  # the topic of xmpp.command is the JID
    assert [m.payload for m in routed if m.kind == XMPP_COMMAND] == [b"list"]
    [sub] = [m for m in routed if m.kind == XMPP_SUBSCRIBE]
    assert (sub.topic, dict(sub.headers)) == ("grid/bat/power", {"jid": "alice@x", "rule": "smartgrid"})
    # a message under the root: both get it (not claimed), smartgrid keeps it; then the subscription is
    # confirmed and the last value goes back to the bridge for that JID (its grant and interceptors)
    assert rp.route(Message(MQTT_MESSAGE, "grid/bat/power", b'{"power":7}')).get() == 2
    rp.route(Message(XMPP_SUBSCRIBED, "grid/bat/power", headers={"jid": "alice@x", "rule": "smartgrid"}))
    _, routed = settle(rec, lambda s: any(m.kind == XMPP_RULE_REPLAY for m in s[1]))
    [replay] = [m for m in routed if m.kind == XMPP_RULE_REPLAY]
    assert (replay.topic, replay.payload) == ("grid/bat/power", b'{"power":7}')
    assert dict(replay.headers) == {"jid": "alice@x", "rule": "smartgrid"}
    rp.route(
        Message(
            XMPP_RULE_DELIVER,
            "grid/bat/power",
            b'{"power":7}',
            headers={"rule": "smartgrid", "jids": "alice@x"},
        )
    )
    chats, _ = settle(rec, lambda s: s[0])
    assert chats == [("alice@x", "\nDevice: bat\n\tpower: 7")]
    # the bridge's deliveries for it, to the JIDs it names
    rp.route(
        Message(
            XMPP_RULE_DELIVER,
            "grid/bat/power",
            b'{"power":8}',
            headers={"rule": "smartgrid", "jids": "a@x\nb@x"},
        )
    )
    rp.route(Message(XMPP_RULE_DELIVER, "grid/bat/power", b"{}", headers={"rule": "other", "jids": "c@x"}))
    chats, _ = settle(rec, lambda s: len(s[0]) >= 3)
    assert chats[1:] == [("a@x", "\nDevice: bat\n\tpower: 8"), ("b@x", "\nDevice: bat\n\tpower: 8")]
