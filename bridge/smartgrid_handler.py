"""The "smartgrid" rule set as a second handler actor of the XMPP <-> MQTT bridge (``[bridge.smartgrid]``;
present = enabled). Contract: docs/smartgrid.md; parsing and rendering: ``smartgrid.py``.

Design: one owner per piece of state, and only tells (``defer``) between the two actors, so no ask cycle.

- The main bridge (``XmppMqttBridge``) stays the only actor the Router delivers ``xmpp.chat`` and
  ``mqtt.message`` to, and the only owner of subscriptions: the ref-counted ``SubscriptionRegistry`` (one
  broker subscription per distinct filter, whoever wants it), their SQLite persistence, authorization, and
  which (JID, topic) subscriptions render the smartgrid way (the "marks", persisted in a SQLite file of their
  own next to the store). So ``list`` and ``unsubscribe`` cover smartgrid topics too, and an ``unsubscribe``
  by a plain subscriber never cancels the broker subscription a smartgrid JID still needs (nor the reverse).
- ``SmartgridHandler`` (this actor) owns the rules: command parsing, rendering and the last-value cache.

The flow::

    chat "GET ..." (first word GET, allowed JID) --main--> command(jid, text, bridge)
        usage          --> a usage reply to the JID
        Query(topic)   --> bridge.subscribe_for(jid, topic): authz, registry, store, mark; then
                           answer(jid, topic): the cached body at once, if there is one
    mqtt.message under the root --main--> deliver(topic, payload, jids)  (jids: marked and allowed)
        render; valid  --> cache it and send it to ``jids``;  invalid JSON/shape --> logged, nothing sent
    last subscription of a root topic gone --main--> forget(topic)  (the cached value would go stale)

Plain ``subscribe`` JIDs keep the plain ``<topic>: <payload>`` rendering on the same topics. For one
(JID, topic) the last command decides: ``GET`` marks it smartgrid, ``subscribe`` makes it plain again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pykka
from loguru import logger

from ferryman.actors.handler import HandlerActor

from .smartgrid import DEFAULT_ROOT, Query, SmartgridRules

__all__ = ["SmartgridHandler", "is_smartgrid_command"]


def is_smartgrid_command(text: str) -> bool:
    """The chats the main bridge hands over: the first word is GET (any case)."""
    words = text.split(maxsplit=1)
    return bool(words) and words[0].lower() == "get"


class SmartgridHandler(HandlerActor):
    name = "smartgrid"

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

    @property
    def root(self) -> str:
        return self.rules.root

    def _send(self, jid: str, body: str) -> None:
        self.xmpp.send_chat.defer(jid, body)

    # -- told by the main bridge -----------------------------------------------------------------------
    def command(self, jid: str, text: str, bridge: pykka.ActorRef[Any]) -> None:
        """A GET chat from an allowed JID; ``bridge`` subscribes it (and then tells ``answer``)."""
        parsed = self.rules.parse(text)
        if isinstance(parsed, Query):
            bridge.proxy().subscribe_for.defer(jid, parsed.topic)
        else:
            self._send(jid, parsed.text)

    def answer(self, jid: str, topic: str) -> None:
        """``jid`` is now subscribed to ``topic``: answer at once from the cache, if there is a value."""
        body = self.rules.answer_now(topic)
        if body is not None:
            self._send(jid, body)

    def deliver(self, topic: str, payload: bytes, jids: Iterable[str]) -> None:
        """A message under the root: cache its rendering and send it to ``jids`` (maybe none)."""
        jids = list(jids)
        body = self.rules.on_message(topic, payload)
        if body is None:
            logger.log(
                "INFO" if jids else "DEBUG",
                "smartgrid: {} not sent to {} JID(s): the payload is not JSON of the shape its topic needs",
                topic,
                len(jids),
            )
            return
        for jid in sorted(jids):
            self._send(jid, body)

    def forget(self, topic: str) -> None:
        """Nobody is subscribed to ``topic`` any more: drop its cached value."""
        self.rules.forget(topic)
