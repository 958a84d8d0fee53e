"""The XMPP <-> MQTT bridge handler actor: XMPP chat commands become MQTT subscriptions and publishes, MQTT
messages go back to the JIDs that asked for them.

The Router delivers it two kinds of messages: ``xmpp.chat`` (a chat from a person; topic = bare sender JID)
and ``mqtt.message`` (from the bridge's own MQTT session). Replies and deliveries go out through the XMPP
session actor's ``send_chat``; subscriptions through the MQTT client actor, one broker subscription per
distinct filter whatever the number of JIDs (``SubscriptionRegistry``), persisted per JID in SQLite
(``Store``) and restored on start. Commands and replies follow the contract in docs/architecture.md
(``commands.py``).

With ``[bridge.smartgrid]`` a second handler actor (``smartgrid_handler.SmartgridHandler``) owns the smartgrid
commands, renderings and last-value cache: this actor hands it the chats whose first word is GET and the
messages under its root, and stays the one owner of every subscription (``subscribe_for``), so ref-counting,
persistence, ``list`` and ``unsubscribe`` cover smartgrid topics too. See that module for the design.

Bounded per JID (issue 11): a JID holds at most ``max_subscriptions_per_jid`` subscriptions and all JIDs
together ``max_subscriptions`` (the SQLite rows and the broker subscriptions follow); each JID may send
``command_rate`` commands a second on average with bursts of ``command_burst`` (a token bucket; the JIDs not
allowed share one bucket, so refusing them stays bounded too). A refused command is answered ``error: ...``
(a rate-limited JID once per run of refusals, not once per message) and counted in
``ferryman_bridge_commands_refused``; ``ferryman_bridge_subscriptions`` is the number held.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import gevent
import pykka
from loguru import logger

from ferryman.actors.contracts import Message
from ferryman.actors.handler import HandlerActor
from ferryman.actors.topics import matches

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
from .smartgrid_handler import is_smartgrid_command
from .store import Store
from .subscriptions import SubscriptionRegistry

__all__ = ["XMPP_CHAT", "CommandLimits", "XmppMqttBridge"]

XMPP_CHAT = "xmpp.chat"
MQTT_MESSAGE = "mqtt.message"
OWNER = "xmpp"  # this bridge's name for its filters on the shared MQTT session
_NOT_ALLOWED = "\x00not-allowed"  # the bucket the JIDs outside allowed_jids share (no JID has a NUL)
_FANOUT_YIELD = 256  # deliveries between two yields of a fan-out to many JIDs


class CommandLimits:
    """The per-JID limits of ``[bridge.xmpp]``."""

    __slots__ = ("burst", "max_per_jid", "max_total", "rate")

    def __init__(
        self, max_per_jid: int = 100, max_total: int = 10000, rate: float = 5.0, burst: int = 20
    ) -> None:
        self.max_per_jid, self.max_total, self.rate, self.burst = max_per_jid, max_total, rate, burst

    @classmethod
    def from_settings(cls, xmpp: Any) -> CommandLimits:
        return cls(
            xmpp.max_subscriptions_per_jid, xmpp.max_subscriptions, xmpp.command_rate, xmpp.command_burst
        )


class _Bucket:
    """A token bucket: ``rate`` tokens a second up to ``burst``; ``warned`` once per run of refusals."""

    __slots__ = ("at", "tokens", "warned")

    def __init__(self, burst: int) -> None:
        self.tokens = float(burst)
        self.at = time.monotonic()
        self.warned = False

    def take(self, rate: float, burst: int) -> bool:
        now = time.monotonic()
        self.tokens = min(float(burst), self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.warned = False
            return True
        return False


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
        smartgrid: pykka.ActorRef[Any] | None = None,
        smartgrid_root: str = "smartgrid/",
        smartgrid_marks: Store | None = None,
        limits: CommandLimits | None = None,
        metrics: Any = None,
    ) -> None:
        super().__init__(options=options, settings=settings, router=router)
        self.limits = limits or CommandLimits()
        self.metrics = metrics  # actors.metrics.Metrics, or None
        self._buckets: dict[str, _Bucket] = {}  # allowed JIDs (bounded by allowed_jids) and _NOT_ALLOWED
        self.xmpp = xmpp.proxy()
        self.mqtt = mqtt.proxy()
        self.store = store
        self.authz = authz
        self.registry = SubscriptionRegistry()
        # The smartgrid rule set (None: disabled). ``_marks``: the (JID, topic) subscriptions made by GET,
        # rendered by the smartgrid actor; persisted in ``smartgrid_marks`` when given.
        self.smartgrid = smartgrid.proxy() if smartgrid is not None else None
        self.smartgrid_root = smartgrid_root
        self.marks_store = smartgrid_marks
        self._marks: set[tuple[str, str]] = set()

    def on_start(self) -> None:
        saved = self.store.load()
        self.registry.load(saved)
        for topic_filter in sorted(self.registry.all_filters()):
            # remembered by the client even while disconnected
            self.mqtt.subscribe.defer(topic_filter, owner=OWNER)
        if self.marks_store is not None:
            for jid, topics in self.marks_store.load().items():
                for topic in topics:
                    if self.registry.has(jid, topic):
                        self._marks.add((jid, topic))
                    else:  # unsubscribed while the marks could not be written: drop the stale mark
                        self.marks_store.remove(jid, topic)
        self._count()
        logger.info(
            "bridge: {} subscription(s) of {} JID(s) restored", sum(map(len, saved.values())), len(saved)
        )

    def on_stop(self) -> None:
        self.store.close()
        if self.marks_store is not None:
            self.marks_store.close()

    # -- routing ---------------------------------------------------------------------------------------
    def handle(self, message: Message) -> None:
        if message.kind == XMPP_CHAT:
            self._command(bare_jid(message.topic), message.payload.decode("utf-8", "replace"))
        elif message.kind == MQTT_MESSAGE:
            self._deliver(message.topic, message.payload)

    def _reply(self, jid: str, body: str) -> None:
        self.xmpp.send_chat.defer(jid, body)

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.bridge_subscriptions.set(len(self.registry))

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.bridge_commands_refused.labels(reason).inc()

    def _admit(self, jid: str, allowed: bool) -> bool:
        """The command rate limit: False (answered once per run of refusals) when ``jid`` is over it."""
        limits = self.limits
        if limits.rate <= 0:
            return True
        key = jid if allowed else _NOT_ALLOWED
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(limits.burst)
        if bucket.take(limits.rate, limits.burst):
            return True
        self._refused("rate")
        if not bucket.warned:
            bucket.warned = True
            if allowed:
                self._reply(
                    jid,
                    reply_error(f"too many commands: at most {limits.rate:g} a second, later ones ignored"),
                )
        return False

    def _subscription_limit(self, jid: str, topic_filter: str) -> str | None:
        """Why ``jid`` may not take one more subscription (``topic_filter``), or None."""
        if self.registry.has(jid, topic_filter):
            return None
        held = len(self.registry.filters_of(jid))
        if held >= self.limits.max_per_jid:
            self._refused("max_subscriptions_per_jid")
            return f"subscription limit reached ({held} of {self.limits.max_per_jid}): unsubscribe first"
        if len(self.registry) >= self.limits.max_total:
            self._refused("max_subscriptions")
            logger.warning("bridge: the total of {} subscriptions is reached", self.limits.max_total)
            return "the gateway's subscription limit is reached: try again later"
        return None

    # -- XMPP -> MQTT ----------------------------------------------------------------------------------
    def _command(self, jid: str, text: str) -> None:
        allowed = self.authz.is_allowed(jid)
        if not self._admit(jid, allowed):
            return
        if not allowed:
            self._refused("not_allowed")
            logger.info("bridge: refused {}: not in allowed_jids", jid)
            self._reply(jid, reply_error(f"{jid} is not allowed to use this gateway"))
            return
        if self.smartgrid is not None and is_smartgrid_command(text):
            self.smartgrid.command.defer(jid, text, self.actor_ref)  # it tells subscribe_for back
            return
        command = parse_command(text)
        if isinstance(command, Subscribe):
            error = self.authz.check_subscribe(jid, command.filter) or self._subscription_limit(
                jid, command.filter
            )
            if error:
                self._reply(jid, reply_error(error))
                return
            if self.registry.add(jid, command.filter):
                self.mqtt.subscribe.defer(command.filter, owner=OWNER)
            self.store.add(jid, command.filter)
            self._count()
            self._unmark(jid, command.filter)  # the last command decides: plain rendering again
            self._reply(jid, reply_subscribed(command.filter))
        elif isinstance(command, Unsubscribe):
            if not self.registry.has(jid, command.filter):
                self._reply(jid, reply_error(f"not subscribed to {command.filter}"))
                return
            if self.registry.remove(jid, command.filter):
                self.mqtt.unsubscribe.defer(command.filter, owner=OWNER)
                if self.smartgrid is not None and command.filter.startswith(self.smartgrid_root):
                    self.smartgrid.forget.defer(command.filter)
            self.store.remove(jid, command.filter)
            self._count()
            self._unmark(jid, command.filter)
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

    # -- smartgrid (told by the smartgrid actor) -------------------------------------------------------
    def subscribe_for(self, jid: str, topic: str) -> None:
        """Subscribe ``jid`` to ``topic`` for the smartgrid rule set (a GET); then the smartgrid actor answers
        from its cache. The registry, the store and ``unsubscribe`` treat it like any subscription."""
        if self.smartgrid is None:
            return
        error = self.authz.check_subscribe(jid, topic) or self._subscription_limit(jid, topic)
        if error:
            self._reply(jid, reply_error(error))
            return
        if self.registry.add(jid, topic):
            self.mqtt.subscribe.defer(topic, owner=OWNER)
        self.store.add(jid, topic)
        self._count()
        if (jid, topic) not in self._marks:
            self._marks.add((jid, topic))
            if self.marks_store is not None:
                self.marks_store.add(jid, topic)
        self.smartgrid.answer.defer(jid, topic)

    def _unmark(self, jid: str, topic_filter: str) -> None:
        if (jid, topic_filter) in self._marks:
            self._marks.discard((jid, topic_filter))
            if self.marks_store is not None:
                self.marks_store.remove(jid, topic_filter)

    def _plain_match(self, jid: str, topic: str) -> bool:
        """Whether a filter of ``jid`` that a GET did not make matches ``topic``."""
        return any(matches(f, topic) for f in self.registry.filters_of(jid) if (jid, f) not in self._marks)

    def _confirm(self, jid: str, topic: str, delivery: Any) -> None:
        if delivery.wait(10):
            self._reply(jid, reply_published(topic))
        elif getattr(delivery, "invalid", False) or delivery.reason.startswith("dropped"):
            self._reply(jid, reply_error(delivery.reason))
        else:
            self._reply(jid, reply_error(f"publish to {topic} was not acknowledged by the broker"))

    # -- MQTT -> XMPP ----------------------------------------------------------------------------------
    def _deliver(self, topic: str, payload: bytes) -> None:
        jids = self.registry.jids_for(topic)
        if not jids:
            return
        plain = jids
        if self.smartgrid is not None and topic.startswith(self.smartgrid_root):
            marked = {j for j in jids if (j, topic) in self._marks}
            if marked:
                # a marked JID also gets the plain rendering when another (plain) filter of its matches
                plain = frozenset(j for j in jids if j not in marked or self._plain_match(j, topic))
            allowed = [j for j in sorted(marked) if self.authz.may_deliver(j, topic)]
            self.smartgrid.deliver.defer(topic, payload, allowed)  # also feeds its cache
        if not plain:
            return
        body = render_message(topic, payload)
        for n, jid in enumerate(sorted(plain), 1):
            if self.authz.may_deliver(jid, topic):
                self._reply(jid, body)
            if n % _FANOUT_YIELD == 0:
                gevent.sleep(0)  # a fan-out to very many JIDs lets the other greenlets run
