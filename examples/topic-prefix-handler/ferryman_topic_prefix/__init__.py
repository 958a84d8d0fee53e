"""Example ferryman handler plug-in: a private topic namespace per user (see README.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ferryman import Direction, Grant, HandlerActor, Refusal, RefusalCode, Session
from ferryman.protocols.mqtt.packets import Publish, Subscribe, Unsubscribe

__all__ = ["PrefixInterceptor", "TopicPrefixHandler"]


class PrefixInterceptor:
    """Adds ``prefix`` to every topic going up and strips it from every topic coming down."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def intercept(self, session: Session, packet: Any, direction: Direction) -> Any | None:
        p = self.prefix
        if direction is Direction.UP:
            if isinstance(packet, Publish):
                return replace(packet, topic=p + packet.topic)
            if isinstance(packet, Subscribe):
                subs = [replace(s, topic_filter=p + s.topic_filter) for s in packet.subscriptions]
                return replace(packet, subscriptions=subs)
            if isinstance(packet, Unsubscribe):
                return replace(packet, topic_filters=[p + f for f in packet.topic_filters])
            return packet
        if isinstance(packet, Publish):
            if not packet.topic.startswith(p):
                return None  # never show a device anything outside its namespace
            return replace(packet, topic=packet.topic[len(p) :])
        return packet


class TopicPrefixHandler(HandlerActor):
    name = "topic-prefix"

    @classmethod
    def validate_options(cls, options: Mapping[str, Any], settings: Any) -> list[str]:
        prefix = options.get("prefix")
        if not isinstance(prefix, str) or not prefix:
            return ["option 'prefix' (a non-empty string such as \"tenants/%u/\") is required"]
        if "+" in prefix or "#" in prefix:
            return ["option 'prefix' must not contain wildcards"]
        return []

    def auth_connect(self, session: Session) -> Grant | Refusal:
        username = session.username or ""
        if "%u" in self.options["prefix"] and (not username or any(c in username for c in "+#/")):
            # No namespace can be made for this name. Abstaining would let the client in unprefixed.
            return Refusal(RefusalCode.NOT_AUTHORIZED, "no topic namespace for this username")
        prefix = str(self.options["prefix"]).replace("%u", username)
        return Grant(("#",), ("#",), interceptors=[PrefixInterceptor(prefix)])
