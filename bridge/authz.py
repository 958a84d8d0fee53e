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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ferryman.actors.contracts import Grant

from .commands import validate_filter, validate_topic

__all__ = ["BridgeAuthz", "bare_jid"]

_EVERYTHING = Grant.everything()


def bare_jid(jid: str) -> str:
    """``Alice@Example.ORG/phone`` -> ``alice@example.org``; empty for an empty or resource-only JID."""
    return jid.strip().split("/", 1)[0].lower()


class BridgeAuthz:
    """Immutable; rebuild it when the settings change."""

    __slots__ = ("_grants", "_ruled")

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
