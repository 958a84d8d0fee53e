"""Who may use the bridge, and on which topics.

A JID is identified by its *bare* form: the resource is stripped and the rest lowercased (a simple stand-in
for XMPP's nodeprep/nameprep: local part and domain compare case-insensitively). Only JIDs in
``allowed_jids`` may use the bridge; an empty list means nobody. Each allowed JID gets a ``Grant`` built from
its entry in ``rules`` (publish filters, subscribe filters), or, when it has none, from ``default_publish``
and ``default_subscribe`` (``[bridge.xmpp]``, both ``["#"]`` by default: the quick start's "an allowed JID
may use every ordinary topic"), so the bridge reuses the filter semantics of every other protocol
(``TopicMatcher``: a subscribe filter must be covered by a granted filter). Rules for JIDs that are not
allowed grant nothing: ``allowed_jids`` decides.

``$`` topics (``$SYS/#`` and the like: the broker's own) are never reachable through the defaults, whatever
they say: only an explicit rule naming them grants them. ``#`` does not match them anyway (MQTT 4.7.2); this
also holds for publishing, where a ``#`` grant alone would let them through.

These rules are a built-in handler of the authorization chain, ``XmppJidHandler``: the bridge wiring puts it
first in the chain the XMPP bridge asks when ``[bridge.xmpp]`` is configured. It decides the sessions of
protocol ``"xmpp"`` (identity: the bare JID) with a ``Grant`` or a ``Refusal`` and abstains for every other
protocol; the rest of the chain (plug-ins, ``[[handler]]`` tables) then refuses or restricts further, as for
any device. On SIGHUP (``reload``) it rebuilds the rules and pushes the change to the live XMPP users: a new
grant, or a disconnect for a JID no longer allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loguru import logger

from ferryman.actors.contracts import Grant, Refusal, RefusalCode, Session
from ferryman.actors.handler import HandlerActor

from .commands import validate_filter, validate_topic

__all__ = ["XMPP", "BridgeAuthz", "XmppJidHandler", "bare_jid"]

XMPP = "xmpp"  # Session.protocol of an XMPP user of the bridge

_EVERYTHING = Grant.everything()


def bare_jid(jid: str) -> str:
    """``Alice@Example.ORG/phone`` -> ``alice@example.org``; empty for an empty or resource-only JID."""
    return jid.strip().split("/", 1)[0].lower()


class _NoDollarGrant(Grant):
    """The defaults' grant: like ``Grant``, but never a ``$`` topic or filter, whatever the filters say."""

    __slots__ = ()

    def auth_publish(self, topic: str, payload: bytes) -> bool:
        return not topic.startswith("$") and super().auth_publish(topic, payload)

    def auth_subscribe(self, topic_filter: str) -> bool:
        return not topic_filter.startswith("$") and super().auth_subscribe(topic_filter)

    def auth_deliver(self, topic: str) -> bool:
        return not topic.startswith("$") and super().auth_deliver(topic)


class BridgeAuthz:
    """Immutable; rebuild it when the settings change."""

    __slots__ = ("_effective", "_grants", "_ruled")

    @classmethod
    def from_settings(cls, xmpp: Any) -> BridgeAuthz:
        """From ``[bridge.xmpp]`` (``BridgeXmppSettings``); None settings: nobody is allowed."""
        if xmpp is None:
            return cls(())
        return cls(
            xmpp.allowed_jids,
            {r.jid: (r.publish, r.subscribe) for r in xmpp.rules},
            default_publish=xmpp.default_publish,
            default_subscribe=xmpp.default_subscribe,
        )

    def __init__(
        self,
        allowed_jids: Iterable[str],
        rules: Mapping[str, tuple[Iterable[str], Iterable[str]]] | None = None,
        default_publish: Iterable[str] = ("#",),
        default_subscribe: Iterable[str] = ("#",),
    ) -> None:
        by_jid = {bare_jid(j): (tuple(p), tuple(s)) for j, (p, s) in (rules or {}).items()}
        pub, sub = tuple(default_publish), tuple(default_subscribe)
        default = _EVERYTHING if (pub, sub) == (("#",), ("#",)) else Grant(publish=pub, subscribe=sub)
        grants: dict[str, Grant] = {}
        for raw in allowed_jids:
            jid = bare_jid(raw)
            if not jid:
                raise ValueError(f"invalid JID in allowed_jids: {raw!r}")
            rule = by_jid.get(jid)
            # Grant validates the filters: a typo in the settings fails at start-up, not per message.
            grants[jid] = default if rule is None else Grant(publish=rule[0], subscribe=rule[1])
        self._grants = grants
        self._ruled = frozenset(j for j in grants if j in by_jid)  # JIDs with an explicit rule
        # What the chain hands out: the explicit rule's grant, or the defaults' without any $ topic.
        no_dollar: dict[tuple[Any, Any], Grant] = {}
        effective: dict[str, Grant] = {}
        for jid, grant in grants.items():
            if jid in self._ruled:
                effective[jid] = grant
            else:
                key = (grant.publish, grant.subscribe)
                if key not in no_dollar:
                    no_dollar[key] = _NoDollarGrant(grant.publish, grant.subscribe)
                effective[jid] = no_dollar[key]
        self._effective = effective

    def decide(self, jid: str) -> Grant | None:
        """The grant the chain gives ``jid`` (its rule, or the defaults without ``$`` topics), or None when
        the JID is not allowed."""
        return self._effective.get(bare_jid(jid))

    def is_allowed(self, jid: str) -> bool:
        return bare_jid(jid) in self._grants

    def grant_for(self, jid: str) -> Grant | None:
        return self._grants.get(bare_jid(jid))

    def _not_allowed(self, jid: str) -> str:
        bare = bare_jid(jid)
        return f"{bare or repr(jid)} is not allowed to use this gateway"

    def check_subscribe(self, jid: str, topic_filter: str) -> str | None:
        """Why ``jid`` may not subscribe ``topic_filter``, or None."""
        grant = self.grant_for(jid)
        if grant is None:
            return self._not_allowed(jid)
        err = validate_filter(topic_filter)
        if err:
            return err
        if topic_filter.startswith("$") and bare_jid(jid) not in self._ruled:
            return f"not allowed to subscribe to {topic_filter} ($ topics need a rule for {bare_jid(jid)})"
        if not grant.auth_subscribe(topic_filter):
            return f"not allowed to subscribe to {topic_filter}"
        return None

    def check_unsubscribe(self, jid: str, topic_filter: str) -> str | None:
        """Any allowed JID may drop its own subscriptions (even ones its rules no longer cover)."""
        return None if self.grant_for(jid) is not None else self._not_allowed(jid)

    def check_publish(self, jid: str, topic: str, payload: bytes = b"") -> str | None:
        """Why ``jid`` may not publish to ``topic``, or None."""
        grant = self.grant_for(jid)
        if grant is None:
            return self._not_allowed(jid)
        err = validate_topic(topic)
        if err:
            return err
        if topic.startswith("$") and bare_jid(jid) not in self._ruled:
            return f"not allowed to publish to {topic} ($ topics need a rule for {bare_jid(jid)})"
        if not grant.auth_publish(topic, payload):
            return f"not allowed to publish to {topic}"
        return None

    def may_deliver(self, jid: str, topic: str) -> bool:
        """May a message on ``topic`` reach ``jid``? (Stored subscriptions can outlive a narrowed rule.)"""
        grant = self.grant_for(jid)
        if grant is None or (topic.startswith("$") and bare_jid(jid) not in self._ruled):
            return False
        return grant.auth_deliver(topic)


class XmppJidHandler(HandlerActor):
    """The ``[bridge.xmpp]`` JID rules as a member of the authorization chain (see the module docstring).

    ``authz``: the rules to use (tests, embedding); by default they are built from ``settings.bridge.xmpp``
    and rebuilt from the new settings on ``reload``."""

    name = "xmpp-jids"

    def __init__(self, *, authz: BridgeAuthz | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.authz = authz if authz is not None else BridgeAuthz.from_settings(_xmpp_settings(self.settings))
        self.live: dict[int, tuple[Session, Grant]] = {}

    def auth_connect(self, session: Session) -> Grant | Refusal | None:
        if session.protocol != XMPP:
            return None
        return self._decide(session)

    def _decide(self, session: Session) -> Grant | Refusal:
        jid = bare_jid(session.identity or session.username or "")
        grant = self.authz.decide(jid)
        if grant is None:
            return Refusal(RefusalCode.NOT_AUTHORIZED, f"{jid or '?'} is not allowed to use this gateway")
        return grant

    def on_connect(self, session: Session, grant: Grant) -> None:
        own = self.authz.decide(session.identity or "") if session.protocol == XMPP else None
        if own is not None:
            self.live[session.id] = (session, own)

    def on_disconnect(self, session: Session, reason: str) -> None:
        self.live.pop(session.id, None)

    def reload(self, settings: Any) -> None:
        super().reload(settings)
        try:
            self.authz = BridgeAuthz.from_settings(_xmpp_settings(settings))
        except ValueError as exc:  # the settings layer validates JIDs and filters; keep the old rules
            logger.error("bridge: JID rules not reloaded (the running ones stay): {}", exc)
            return
        for sid, (session, old) in list(self.live.items()):
            decision = self._decide(session)
            if session.control is None:
                continue
            if isinstance(decision, Refusal):
                logger.info("bridge: revoking {}: {}", session.identity, decision.reason)
                session.control.disconnect(Refusal(RefusalCode.NOT_AUTHORIZED, f"revoked: {decision.reason}"))
                self.live.pop(sid, None)
            elif not _same(decision, old):
                logger.info("bridge: new grant for {}", session.identity)
                session.control.update_grant(decision)
                self.live[sid] = (session, decision)


def _same(a: Grant, b: Grant) -> bool:
    return type(a) is type(b) and a.publish == b.publish and a.subscribe == b.subscribe


def _xmpp_settings(settings: Any) -> Any:
    bridge = getattr(settings, "bridge", None)
    return getattr(bridge, "xmpp", None)
