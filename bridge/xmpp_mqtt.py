"""The XMPP <-> MQTT bridge handler actor: XMPP chat commands become MQTT subscriptions and publishes, MQTT
messages go back to the JIDs that asked for them.

The Router delivers it two kinds of messages: ``xmpp.chat`` (a chat from a person; topic = bare sender JID)
and ``mqtt.message`` (from the bridge's own MQTT session). Replies and deliveries go out through the XMPP
session actor's ``send_chat``; subscriptions through the MQTT client actor, one broker subscription per
distinct filter whatever the number of JIDs (``SubscriptionRegistry``), persisted per JID in SQLite
(``Store``) and restored on start. Commands and replies follow DESIGN.md's contract (``commands.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gevent
import pykka
from loguru import logger

from ferryman.actors.contracts import Message
from ferryman.actors.handler import HandlerActor

from .authz import BridgeAuthz, bare_jid
from .commands import (
    Help,
    List,
    Publish,
    Subscribe,
    Unsubscribe,
    parse_command,
    reply_error,
    reply_help,
    reply_list,
    reply_published,
    reply_subscribed,
    reply_unsubscribed,
)
from .rendering import render_message
from .store import Store
from .subscriptions import SubscriptionRegistry

__all__ = ["XMPP_CHAT", "XmppMqttBridge"]

XMPP_CHAT = "xmpp.chat"
MQTT_MESSAGE = "mqtt.message"


class XmppMqttBridge(HandlerActor):
    name = "xmpp-mqtt"

    def __init__(
        self,
        *,
        xmpp: pykka.ActorRef[Any],
        mqtt: pykka.ActorRef[Any],
        store: Store,
        authz: BridgeAuthz,
        options: Mapping[str, Any] | None = None,
        settings: Any = None,
        router: Any = None,
    ) -> None:
        super().__init__(options=options, settings=settings, router=router)
        self.xmpp = xmpp.proxy()
        self.mqtt = mqtt.proxy()
        self.store = store
        self.authz = authz
        self.registry = SubscriptionRegistry()

    def on_start(self) -> None:
        saved = self.store.load()
        self.registry.load(saved)
        for topic_filter in sorted(self.registry.all_filters()):
            self.mqtt.subscribe.defer(topic_filter)  # remembered by the client even while disconnected
        logger.info(
            "bridge: {} subscription(s) of {} JID(s) restored", sum(map(len, saved.values())), len(saved)
        )

    def on_stop(self) -> None:
        self.store.close()

    # -- routing ---------------------------------------------------------------------------------------
    def handle(self, message: Message) -> None:
        if message.kind == XMPP_CHAT:
            self._command(bare_jid(message.topic), message.payload.decode("utf-8", "replace"))
        elif message.kind == MQTT_MESSAGE:
            self._deliver(message.topic, message.payload)

    def _reply(self, jid: str, body: str) -> None:
        self.xmpp.send_chat.defer(jid, body)

    # -- XMPP -> MQTT ----------------------------------------------------------------------------------
    def _command(self, jid: str, text: str) -> None:
        if not self.authz.is_allowed(jid):
            logger.info("bridge: refused {}: not in allowed_jids", jid)
            self._reply(jid, reply_error(f"{jid} is not allowed to use this gateway"))
            return
        command = parse_command(text)
        if isinstance(command, Subscribe):
            error = self.authz.check_subscribe(jid, command.filter)
            if error:
                self._reply(jid, reply_error(error))
                return
            if self.registry.add(jid, command.filter):
                self.mqtt.subscribe.defer(command.filter)
            self.store.add(jid, command.filter)
            self._reply(jid, reply_subscribed(command.filter))
        elif isinstance(command, Unsubscribe):
            if not self.registry.has(jid, command.filter):
                self._reply(jid, reply_error(f"not subscribed to {command.filter}"))
                return
            if self.registry.remove(jid, command.filter):
                self.mqtt.unsubscribe.defer(command.filter)
            self.store.remove(jid, command.filter)
            self._reply(jid, reply_unsubscribed(command.filter))
        elif isinstance(command, Publish):
            error = self.authz.check_publish(jid, command.topic, command.payload_bytes)
            if error:
                self._reply(jid, reply_error(error))
                return
            delivery = self.mqtt.publish_async(command.topic, command.payload_bytes).get(timeout=5)
            # The reply waits for the broker's PUBACK, in a greenlet of its own: the actor goes on.
            gevent.spawn(self._confirm, jid, command.topic, delivery)
        elif isinstance(command, List):
            self._reply(jid, reply_list(self.registry.filters_of(jid)))
        elif isinstance(command, Help):
            self._reply(jid, reply_help(command))

    def _confirm(self, jid: str, topic: str, delivery: Any) -> None:
        if delivery.wait(10):
            self._reply(jid, reply_published(topic))
        else:
            self._reply(jid, reply_error(f"publish to {topic} was not acknowledged by the broker"))

    # -- MQTT -> XMPP ----------------------------------------------------------------------------------
    def _deliver(self, topic: str, payload: bytes) -> None:
        jids = self.registry.jids_for(topic)
        if not jids:
            return
        body = render_message(topic, payload)
        for jid in sorted(jids):
            if self.authz.may_deliver(jid, topic):
                self._reply(jid, body)
