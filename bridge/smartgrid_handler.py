"""The "smartgrid" rule set as a rule actor of the XMPP <-> MQTT bridge (``[bridge.smartgrid]``; present =
enabled). Contract: docs/smartgrid.md; parsing and rendering: ``smartgrid.py``.

A rule-set plug-in like any other: found by name in the entry-point group ``ferryman.rules``
(``smartgrid``), started by the bridge wiring with ``start_rule`` and connected to the XMPP bridge through the
Router only (the message kinds of ``xmpp_mqtt.py``). The XMPP bridge knows nothing of smartgrid.

Design: one owner per piece of state, and only tells between the actors, so no ask cycle.

- The XMPP bridge (``XmppMqttBridge``) admits the chats (rate, the authorization chain's grant) and owns
  every subscription: the ref-counted registry (one broker subscription per distinct filter, whoever wants
  it), its SQLite persistence, the grant's checks, and which (JID, topic) subscriptions a rule set made (the
  "marks", persisted for smartgrid in a SQLite file of their own next to the store). So ``list`` and
  ``unsubscribe`` cover smartgrid topics too, and an ``unsubscribe`` by a plain subscriber never cancels the
  broker subscription a smartgrid JID still needs (nor the reverse).
- ``SmartgridHandler`` (this actor) owns the rules: command parsing, rendering and the last-value cache.

The routes it registers and the flow::

    xmpp.command whose first word is GET (claimed: the bridge does not see them)
        usage          --> a usage reply to the JID
        Query(topic)   --> xmpp.subscribe (jid, rule "smartgrid"): the bridge checks, subscribes, marks;
                           xmpp.subscribed --> the topic's last value, if there is one, as xmpp.rule.replay:
                           the bridge hands it back as xmpp.rule.deliver after the JID's grant and
                           interceptors, so a GET is answered at once
    mqtt.message under the root    --> render; valid: its rendering and payload are the topic's last value
                           (every message under the root, whoever asked)
    xmpp.rule.deliver for "smartgrid" (from the bridge: the marked JIDs allowed to get it, and the message
                           after their interceptors) --> render and send; invalid JSON/shape --> logged
    xmpp.released under the root   --> nobody holds the topic any more: drop its cached value

Plain ``subscribe`` JIDs keep the plain ``<topic>: <payload>`` rendering on the same topics. For one
(JID, topic) the last command decides: ``GET`` marks it smartgrid, ``subscribe`` makes it plain again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import pykka
from loguru import logger

from ferryman.actors.contracts import Message
from ferryman.actors.rules import RuleActor, RuleContext

from .smartgrid import DEFAULT_ROOT, Query, SmartgridRules
from .xmpp_mqtt import (
    MQTT_MESSAGE,
    XMPP_COMMAND,
    XMPP_RELEASED,
    XMPP_RULE_DELIVER,
    XMPP_RULE_REPLAY,
    XMPP_SUBSCRIBE,
    XMPP_SUBSCRIBED,
)

__all__ = ["RULE", "SmartgridHandler", "is_smartgrid_command"]

RULE = "smartgrid"


def is_smartgrid_command(text: str) -> bool:
    """The chats this rule set claims: the first word is GET (any case)."""
    words = text.split(maxsplit=1)
    return bool(words) and words[0].lower() == "get"


def _claims(message: Message) -> bool:
    return is_smartgrid_command(message.payload.decode("utf-8", "replace"))


def _mine(message: Message) -> bool:
    return message.headers.get("rule") == RULE


class _UnderRoot:
    """A route predicate: the message's topic is under ``root``."""

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self, message: Message) -> bool:
        return message.topic.startswith(self.root)


class SmartgridHandler(RuleActor):
    name = RULE

    def __init__(
        self,
        *,
        xmpp: pykka.ActorRef[Any],
        root: str = DEFAULT_ROOT,
        options: Mapping[str, Any] | None = None,
        settings: Any = None,
        router: Any = None,
    ) -> None:
        super().__init__(options=options, settings=settings, router=router)
        self.xmpp = xmpp.proxy()
        self.rules = SmartgridRules(root)
        self._route: Any = router.proxy().route if router is not None else None
        # The payloads of the last values (``rules`` keeps their renderings), replayed through the bridge.
        self._last: OrderedDict[str, bytes] = OrderedDict()

    @classmethod
    def start_rule(cls, context: RuleContext) -> list[Any]:
        """Started by the bridge wiring for ``[bridge.smartgrid]``: needs the ``"xmpp"`` port (the XMPP
        session actor) and registers its routes with ``context.router``."""
        sg = getattr(getattr(context.settings, "bridge", None), "smartgrid", None)
        root = str(context.options.get("root") or (sg.root if sg is not None else DEFAULT_ROOT))
        xmpp = context.ports["xmpp"]
        ref = cls.start(xmpp=xmpp, root=root, settings=context.settings, router=context.router)
        try:
            cls.register(ref, context.router, SmartgridRules(root).root)
        except BaseException:
            ref.stop()
            raise
        return [ref]

    @staticmethod
    def register(ref: pykka.ActorRef[Any], router: pykka.ActorRef[Any], root: str) -> None:
        """The routes of this rule set (``root`` as ``SmartgridRules`` normalises it)."""
        rp = router.proxy()
        under_root = _UnderRoot(root)
        rp.register(XMPP_COMMAND, ref, match=_claims, claim=True).get(timeout=5)
        rp.register(MQTT_MESSAGE, ref, match=under_root).get(timeout=5)
        rp.register(XMPP_SUBSCRIBED, ref, match=_mine).get(timeout=5)
        rp.register(XMPP_RULE_DELIVER, ref, match=_mine).get(timeout=5)
        rp.register(XMPP_RELEASED, ref, match=under_root).get(timeout=5)

    @property
    def root(self) -> str:
        return self.rules.root

    def _send(self, jid: str, body: str) -> None:
        self.xmpp.send_chat.defer(jid, body)

    def handle(self, message: Message) -> None:
        kind = message.kind
        if kind == XMPP_RULE_DELIVER:
            self.deliver(message.topic, message.payload, message.headers.get("jids", "").split("\n"))
        elif kind == MQTT_MESSAGE:
            self.cache(message.topic, message.payload)
        elif kind == XMPP_COMMAND:
            self.command(message.topic, message.payload.decode("utf-8", "replace"))
        elif kind == XMPP_SUBSCRIBED:
            self.answer(message.headers.get("jid", ""), message.topic)
        elif kind == XMPP_RELEASED:
            self.rules.forget(message.topic)
            self._last.pop(message.topic, None)

    def command(self, jid: str, text: str) -> None:
        """A GET chat of an admitted JID: subscribe it through the bridge (which answers ``subscribed``)."""
        parsed = self.rules.parse(text)
        if not isinstance(parsed, Query):
            self._send(jid, parsed.text)
        elif self._route is not None:
            self._route.defer(Message(XMPP_SUBSCRIBE, parsed.topic, headers={"jid": jid, "rule": RULE}))

    def answer(self, jid: str, topic: str) -> None:
        """``jid`` is now subscribed to ``topic``: the last value, if there is one, goes to it at once
        (through the bridge, which applies the JID's grant and interceptors)."""
        payload = self._last.get(topic)
        if not jid or payload is None or self.rules.answer_now(topic) is None:
            return
        if self._route is not None:
            self._route.defer(Message(XMPP_RULE_REPLAY, topic, payload, headers={"jid": jid, "rule": RULE}))

    def cache(self, topic: str, payload: bytes) -> None:
        """A message under the root, as the broker sent it: its rendering becomes the topic's last value."""
        if self.rules.on_message(topic, payload) is None:
            logger.debug("smartgrid: {} not cached: not JSON of the shape its topic needs", topic)
            return
        self._last[topic] = payload
        self._last.move_to_end(topic)
        while len(self._last) > self.rules.max_cached:
            self._last.popitem(last=False)

    def deliver(self, topic: str, payload: bytes, jids: list[str]) -> None:
        """A message for ``jids`` (the bridge applied their grants and interceptors): render and send."""
        jids = [j for j in jids if j]
        body = self.rules.render(topic, payload)
        if body is None:
            logger.info(
                "smartgrid: {} not sent to {} JID(s): the payload is not JSON of the shape its topic needs",
                topic,
                len(jids),
            )
            return
        for jid in sorted(jids):
            self._send(jid, body)
