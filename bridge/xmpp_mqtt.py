"""The XMPP <-> MQTT bridge rule actor: XMPP chat commands become MQTT subscriptions and publishes, MQTT
messages go back to the JIDs that asked for them.

The Router delivers it ``xmpp.chat`` (a chat from a person; topic = bare sender JID), ``xmpp.command`` (a
chat it admitted and no rule set claimed), ``xmpp.subscribe`` (a rule set subscribing a JID) and
``mqtt.message`` (from the bridge's own MQTT session). Replies and deliveries go out through the XMPP
session actor's ``send_chat``; subscriptions through the MQTT client actor, one broker subscription per
distinct filter whatever the number of JIDs (``SubscriptionRegistry``), persisted per JID (a
``SubscriptionStore``: SQLite, or Redis with ``[cluster] redis``) and restored on start. Commands and
replies follow the contract in docs/architecture.md (``commands.py``).

Who may do what is the authorization chain's answer, as for every protocol: a JID's first command (or the
first message due to it) makes a ``Session(protocol="xmpp", identity=<bare JID>)`` and asks the chain it was
given (``protocols/xmpp/users.py``) for a grant, kept per bare JID and replaced or ended live by handlers
(``SessionControl``). The ``[bridge.xmpp]`` JID rules are the chain's first handler
(``authz.XmppJidHandler``).
Publishes run the grant's interceptors on an MQTT ``Publish`` going up (a dropped one is answered
``published``), deliveries going down (a dropped one is not sent), then the grant's checks.

Rule sets (``[bridge.smartgrid]`` is one; any ``RuleActor`` plug-in of ``ferryman.rules``) talk to it through
the Router only, with these kinds (constants below):

- ``xmpp.chat`` -> admission (rate, grant) -> routed again as ``xmpp.command``: a rule set's claiming route
  takes the commands it owns (``Router.register(XMPP_COMMAND, ref, match=..., claim=True)``); this actor's
  own route gets the rest.
- ``xmpp.subscribe`` (topic: the filter; headers ``jid``, ``rule``): subscribe the JID on the rule set's
  behalf, with the same checks, limits, persistence, ``list`` and ``unsubscribe`` as a ``subscribe``
  command. Messages on it then reach the JID through the rule set: ``xmpp.rule.deliver`` (topic, payload
  after the JID's interceptors; headers ``rule`` and ``jids``, newline-separated), unless a plain filter of
  the JID matches too. The (JID, filter) pairs a rule set made are its *marks*, persisted in ``rule_marks``
  stores; the last command decides (``subscribe`` makes a pair plain again). Answered with
  ``xmpp.subscribed`` (same topic and headers) once done.
- ``xmpp.rule.replay`` (topic, payload; headers ``jid``, ``rule``): a value the rule set kept (a last
  value) for one JID holding a matching subscription of that rule set: it comes back as
  ``xmpp.rule.deliver`` after the JID's grant and interceptors, like a live message.
- ``xmpp.released`` (topic: the filter): no JID holds the filter any more (the broker subscription ends).

Bounded per JID (issue 11): a JID holds at most ``max_subscriptions_per_jid`` subscriptions and all JIDs
together ``max_subscriptions`` (the stored pairs and the broker subscriptions follow); each JID may send
``command_rate`` commands a second on average with bursts of ``command_burst`` (a token bucket; the JIDs not
allowed share one bucket, so refusing them stays bounded too). A refused command is answered ``error: ...``
(a rate-limited JID once per run of refusals, not once per message) and counted in
``ferryman_bridge_commands_refused``; ``ferryman_bridge_subscriptions`` is the number held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gevent
import pykka
from loguru import logger

from ferryman.actors.contracts import Direction, Message, Refusal
from ferryman.actors.handler import HandlerChain
from ferryman.actors.intercept import run_interceptors
from ferryman.actors.rate import TokenBucket
from ferryman.actors.rules import RuleActor
from ferryman.actors.topics import matches
from ferryman.protocols.mqtt.packets import Publish as PublishPacket
from ferryman.protocols.xmpp.users import XmppUser, XmppUsers

from .authz import bare_jid
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
    validate_filter,
    validate_topic,
)
from .rendering import render_message
from .store import SubscriptionStore
from .subscriptions import SubscriptionRegistry

__all__ = [
    "MQTT_MESSAGE",
    "XMPP_CHAT",
    "XMPP_COMMAND",
    "XMPP_RELEASED",
    "XMPP_RULE_DELIVER",
    "XMPP_RULE_REPLAY",
    "XMPP_SUBSCRIBE",
    "XMPP_SUBSCRIBED",
    "CommandLimits",
    "XmppMqttBridge",
]

XMPP_CHAT = "xmpp.chat"
XMPP_COMMAND = "xmpp.command"
XMPP_SUBSCRIBE = "xmpp.subscribe"
XMPP_SUBSCRIBED = "xmpp.subscribed"
XMPP_RULE_DELIVER = "xmpp.rule.deliver"
XMPP_RULE_REPLAY = "xmpp.rule.replay"
XMPP_RELEASED = "xmpp.released"
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


class _Bucket(TokenBucket):
    """The command-rate token bucket (``actors/rate.py``); ``warned`` once per run of refusals."""

    __slots__ = ("warned",)

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__(rate, burst)
        self.warned = False


class XmppMqttBridge(RuleActor):
    name = "xmpp-mqtt"

    def __init__(
        self,
        *,
        xmpp: pykka.ActorRef[Any],
        mqtt: pykka.ActorRef[Any],
        store: SubscriptionStore,
        chain: HandlerChain,
        options: Mapping[str, Any] | None = None,
        settings: Any = None,
        router: pykka.ActorRef[Any] | None = None,
        rule_marks: Mapping[str, SubscriptionStore] | None = None,
        limits: CommandLimits | None = None,
        metrics: Any = None,
    ) -> None:
        super().__init__(options=options, settings=settings, router=router)
        self.limits = limits or CommandLimits()
        self.metrics = metrics  # actors.metrics.Metrics, or None
        self._buckets: dict[str, _Bucket] = {}  # granted JIDs and _NOT_ALLOWED
        self.xmpp = xmpp.proxy()
        self.mqtt = mqtt.proxy()
        self.store = store
        self.registry = SubscriptionRegistry()
        # The XMPP users' sessions, decided by the chain; handlers' controls come back through _me.control.
        self.users = XmppUsers(chain, self._tell_control)
        self._me: Any = None
        # Without a Router (tests), commands are handled here at once and no rule set can claim any.
        self._route: Any = router.proxy().route if router is not None else None
        # The (JID, filter) subscriptions a rule set made -> its name ("marks"), and how many each JID has.
        self.rule_marks: dict[str, SubscriptionStore] = dict(rule_marks or {})
        self._marks: dict[tuple[str, str], str] = {}
        self._marked: dict[str, int] = {}

    def on_start(self) -> None:
        self._me = self.actor_ref.proxy()
        saved = self.store.load()
        self.registry.load(saved)
        for topic_filter in sorted(self.registry.all_filters()):
            # remembered by the client even while disconnected
            self.mqtt.subscribe.defer(topic_filter, owner=OWNER)
        for rule, marks_store in self.rule_marks.items():
            for jid, topics in marks_store.load().items():
                for topic in topics:
                    if self.registry.has(jid, topic):
                        self._mark(jid, topic, rule, persist=False)
                    else:  # unsubscribed while the marks could not be written: drop the stale mark
                        marks_store.remove(jid, topic)
        self._count()
        logger.info(
            "bridge: {} subscription(s) of {} JID(s) restored", sum(map(len, saved.values())), len(saved)
        )

    def on_stop(self) -> None:
        self.users.end_all("bridge stopping")
        self.store.close()
        for marks_store in self.rule_marks.values():
            marks_store.close()

    # -- routing ---------------------------------------------------------------------------------------
    def handle(self, message: Message) -> None:
        kind = message.kind
        if kind == MQTT_MESSAGE:
            self._deliver(message.topic, message.payload)
        elif kind == XMPP_CHAT:
            self._chat(message)
        elif kind == XMPP_COMMAND:
            user = self.users.decide(bare_jid(message.topic))
            if isinstance(user, Refusal):  # ended between admission and now
                self._not_allowed(bare_jid(message.topic), user)
            else:
                self._command(user, message.payload.decode("utf-8", "replace"))
        elif kind == XMPP_SUBSCRIBE:
            self._rule_subscribe(
                bare_jid(message.headers.get("jid", "")), message.topic, message.headers.get("rule", "")
            )
        elif kind == XMPP_RULE_REPLAY:
            self._replay(message)

    def _reply(self, jid: str, body: str) -> None:
        self.xmpp.send_chat.defer(jid, body)

    def _count(self) -> None:
        if self.metrics is not None:
            self.metrics.bridge_subscriptions.set(len(self.registry))

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.bridge_commands_refused.labels(reason).inc()

    # -- sessions (SessionControl of the XMPP users) ---------------------------------------------------
    def _tell_control(self, op: str, jid: str, session_id: int, arg: Any) -> None:
        if self._me is not None:
            self._me.control.defer(op, jid, session_id, arg)

    def control(self, op: str, jid: str, session_id: int, arg: Any) -> None:
        """A handler's ``update_grant`` / ``disconnect`` for one XMPP user (told by ``XmppUserControl``)."""
        ended = self.users.apply(op, jid, session_id, arg)
        if ended is not None:
            self._reply(jid, reply_error(ended.reason or "your session was ended"))

    def _not_allowed(self, jid: str, refusal: Refusal) -> None:
        self._refused("not_allowed")
        logger.info("bridge: refused {}: {}", jid, refusal.reason)
        self._reply(jid, reply_error(f"{jid} is not allowed to use this gateway"))

    def _admit(self, jid: str, allowed: bool) -> bool:
        """The command rate limit: False (answered once per run of refusals) when ``jid`` is over it."""
        limits = self.limits
        if limits.rate <= 0:
            return True
        key = jid if allowed else _NOT_ALLOWED
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(limits.rate, limits.burst)
        if bucket.take():
            bucket.warned = False
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

    @staticmethod
    def _check_subscribe(user: XmppUser, topic_filter: str) -> str | None:
        err = validate_filter(topic_filter)
        if err:
            return err
        if not user.grant.auth_subscribe(topic_filter):
            return f"not allowed to subscribe to {topic_filter}"
        return None

    @staticmethod
    def _check_publish(user: XmppUser, topic: str, payload: bytes) -> str | None:
        err = validate_topic(topic)
        if err:
            return err
        if not user.grant.auth_publish(topic, payload):
            return f"not allowed to publish to {topic}"
        return None

    # -- XMPP -> MQTT ----------------------------------------------------------------------------------
    def _chat(self, message: Message) -> None:
        """A chat from the network: admission (rate, the chain's decision), then the command goes to the
        rule set that claims it, or comes back here as ``xmpp.command``."""
        jid = bare_jid(message.topic)
        user = self.users.decide(jid)
        allowed = not isinstance(user, Refusal)
        if not self._admit(jid, allowed):
            return
        if isinstance(user, Refusal):
            self._not_allowed(jid, user)
            return
        if self._route is None:
            self._command(user, message.payload.decode("utf-8", "replace"))
            return
        self._route.defer(Message(XMPP_COMMAND, jid, message.payload, source=message.source))

    def _hold(self, jid: str, topic_filter: str) -> None:
        if self.registry.add(jid, topic_filter):
            self.mqtt.subscribe.defer(topic_filter, owner=OWNER)
        self.store.add(jid, topic_filter)
        self._count()

    def _command(self, user: XmppUser, text: str) -> None:
        jid = user.jid
        chain = self.users.chain
        command = parse_command(text)
        if isinstance(command, Subscribe):
            topic_filter = command.filter
            error = self._check_subscribe(user, topic_filter) or self._subscription_limit(jid, topic_filter)
            if error:
                self._reply(jid, reply_error(error))
                return
            self._hold(jid, command.filter)
            self._unmark(jid, command.filter)  # the last command decides: plain rendering again
            if chain.wants_subscribe:
                chain.on_subscribe(user.session, [command.filter])
            self._reply(jid, reply_subscribed(command.filter))
        elif isinstance(command, Unsubscribe):
            if not self.registry.has(jid, command.filter):
                self._reply(jid, reply_error(f"not subscribed to {command.filter}"))
                return
            if self.registry.remove(jid, command.filter):
                self.mqtt.unsubscribe.defer(command.filter, owner=OWNER)
                self._released(command.filter)
            self.store.remove(jid, command.filter)
            self._count()
            self._unmark(jid, command.filter)
            if chain.wants_unsubscribe:
                chain.on_unsubscribe(user.session, [command.filter])
            self._reply(jid, reply_unsubscribed(command.filter))
        elif isinstance(command, Publish):
            self._publish(user, command.topic, command.payload_bytes)
        elif isinstance(command, List):
            self._reply(jid, reply_list(self.registry.filters_of(jid)))
        elif isinstance(command, Help):
            self._reply(jid, reply_help(command))

    def _publish(self, user: XmppUser, topic: str, payload: bytes) -> None:
        jid = user.jid
        error = self._check_publish(user, topic, payload)
        if error:
            self._reply(jid, reply_error(error))
            return
        grant = user.grant
        if grant.interceptors:
            packet = run_interceptors(
                grant, user.session, PublishPacket(topic, payload, 1, False, packet_id=1), Direction.UP
            )
            if packet is None:  # an interceptor consumed it: answered as delivered
                self._reply(jid, reply_published(topic))
                return
            out_topic, out_payload = packet.topic, packet.payload
        else:
            out_topic, out_payload = topic, payload
        chain = self.users.chain
        if chain.wants_publish:
            chain.on_publish(user.session, out_topic, out_payload)
        delivery = self.mqtt.publish_async(out_topic, out_payload).get(timeout=5)
        # The reply waits for the broker's PUBACK, in a greenlet of its own: the actor goes on.
        gevent.spawn(self._confirm, jid, topic, delivery)

    def _confirm(self, jid: str, topic: str, delivery: Any) -> None:
        if delivery.wait(10):
            self._reply(jid, reply_published(topic))
        elif getattr(delivery, "invalid", False) or delivery.reason.startswith("dropped"):
            self._reply(jid, reply_error(delivery.reason))
        else:
            self._reply(jid, reply_error(f"publish to {topic} was not acknowledged by the broker"))

    # -- rule sets (through the Router) ----------------------------------------------------------------
    def _rule_subscribe(self, jid: str, topic_filter: str, rule: str) -> None:
        """Subscribe ``jid`` to ``topic_filter`` for the rule set ``rule``: the checks, limits, persistence
        and ``list`` / ``unsubscribe`` of any subscription; its messages then go to the rule set."""
        if not jid or not rule:
            logger.warning("bridge: xmpp.subscribe without a jid or a rule: {!r}", topic_filter)
            return
        user = self.users.decide(jid)
        if isinstance(user, Refusal):
            self._not_allowed(jid, user)
            return
        error = self._check_subscribe(user, topic_filter) or self._subscription_limit(jid, topic_filter)
        if error:
            self._reply(jid, reply_error(error))
            return
        self._hold(jid, topic_filter)
        self._mark(jid, topic_filter, rule, persist=True)
        chain = self.users.chain
        if chain.wants_subscribe:
            chain.on_subscribe(user.session, [topic_filter])
        if self._route is not None:
            self._route.defer(Message(XMPP_SUBSCRIBED, topic_filter, headers={"jid": jid, "rule": rule}))

    def _replay(self, message: Message) -> None:
        """A rule set's kept value for one JID: delivered back to it as a live message would be."""
        jid, rule, topic = (
            bare_jid(message.headers.get("jid", "")),
            message.headers.get("rule", ""),
            message.topic,
        )
        if jid not in self._marked or rule not in self._renderers(jid, topic)[1]:
            return  # the JID holds no subscription of that rule set matching the topic (any more)
        user = self.users.decide(jid)
        if isinstance(user, Refusal):
            return
        out = self._down(user, topic, message.payload)
        if out is not None and self._route is not None:
            headers = {"rule": rule, "jids": jid}
            self._route.defer(Message(XMPP_RULE_DELIVER, out[0], out[1], headers=headers))

    @staticmethod
    def _down(user: XmppUser, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """A message going to ``user`` after its grant's interceptors and delivery check, or None."""
        grant = user.grant
        if grant.interceptors:
            packet = run_interceptors(grant, user.session, PublishPacket(topic, payload), Direction.DOWN)
            if packet is None:
                return None
            topic, payload = packet.topic, packet.payload
        return (topic, payload) if grant.auth_deliver(topic) else None

    def _released(self, topic_filter: str) -> None:
        if self._route is not None:
            self._route.defer(Message(XMPP_RELEASED, topic_filter))

    def _mark(self, jid: str, topic_filter: str, rule: str, *, persist: bool) -> None:
        old = self._marks.get((jid, topic_filter))
        if old == rule:
            return
        if old is not None:
            self._unmark(jid, topic_filter)
        self._marks[(jid, topic_filter)] = rule
        self._marked[jid] = self._marked.get(jid, 0) + 1
        marks_store = self.rule_marks.get(rule)
        if persist and marks_store is not None:
            marks_store.add(jid, topic_filter)

    def _unmark(self, jid: str, topic_filter: str) -> None:
        rule = self._marks.pop((jid, topic_filter), None)
        if rule is None:
            return
        left = self._marked[jid] - 1
        if left:
            self._marked[jid] = left
        else:
            del self._marked[jid]
        marks_store = self.rule_marks.get(rule)
        if marks_store is not None:
            marks_store.remove(jid, topic_filter)

    def _renderers(self, jid: str, topic: str) -> tuple[bool, set[str]]:
        """For a JID with marks: whether a plain filter of its matches ``topic``, and the rule sets whose
        filters match it."""
        plain = False
        rules: set[str] = set()
        for f in self.registry.filters_of(jid):
            if not matches(f, topic):
                continue
            rule = self._marks.get((jid, f))
            if rule is None:
                plain = True
            else:
                rules.add(rule)
        return plain, rules

    # -- MQTT -> XMPP ----------------------------------------------------------------------------------
    def _deliver(self, topic: str, payload: bytes) -> None:
        jids = self.registry.jids_for(topic)
        if not jids:
            return
        users = self.users
        marked = self._marked
        body: str | None = None  # the plain rendering of the message as received, made once
        for_rules: dict[tuple[str, str, bytes], list[str]] = {}
        for n, jid in enumerate(sorted(jids), 1):
            if n % _FANOUT_YIELD == 0:
                gevent.sleep(0)  # a fan-out to very many JIDs lets the other greenlets run
            user = users.decide(jid)
            if isinstance(user, Refusal):
                continue
            out = self._down(user, topic, payload)
            if out is None:
                continue
            out_topic, out_payload = out
            plain, rules = self._renderers(jid, topic) if jid in marked else (True, set())
            for rule in rules:
                for_rules.setdefault((rule, out_topic, out_payload), []).append(jid)
            if not plain:
                continue
            if out_topic is topic and out_payload is payload:
                if body is None:
                    body = render_message(topic, payload)
                self._reply(jid, body)
            else:
                self._reply(jid, render_message(out_topic, out_payload))
        if self._route is not None:
            for (rule, out_topic, out_payload), rule_jids in for_rules.items():
                self._route.defer(
                    Message(
                        XMPP_RULE_DELIVER,
                        out_topic,
                        out_payload,
                        headers={"rule": rule, "jids": "\n".join(rule_jids)},
                    )
                )
