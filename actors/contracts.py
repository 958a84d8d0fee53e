"""The contracts every layer shares: Session, Grant, Refusal, Direction, Interceptor, Message.

A session asks the handler chain once, at CONNECT, and receives a *grant*: an immutable object whose methods
answer the per-packet questions (may this client publish here, subscribe there, receive that) inline, on the
data plane, with no actor hop. A handler that needs per-packet logic returns its own ``Grant`` subclass.
When policy changes, the handler tells the live session a new grant (``SessionControl.update_grant``) or to
disconnect (``SessionControl.disconnect``).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .topics import TopicMatcher

__all__ = [
    "CombinedGrant",
    "Direction",
    "Grant",
    "Interceptor",
    "Message",
    "Refusal",
    "RefusalCode",
    "Session",
    "SessionControl",
    "next_session_id",
]

_ids = itertools.count(1)


def next_session_id() -> int:
    return next(_ids)


class Direction(enum.Enum):
    """Which way a packet travels: UP from the device to the upstream server, DOWN back to the device."""

    UP = "up"
    DOWN = "down"


class RefusalCode(enum.Enum):
    """Why something was refused; each protocol maps it to its own terms (CONNACK code, HTTP status, ...)."""

    BAD_CREDENTIALS = "bad_credentials"
    NOT_AUTHORIZED = "not_authorized"
    BANNED = "banned"
    SERVER_UNAVAILABLE = "server_unavailable"
    SERVER_BUSY = "server_busy"
    SERVER_SHUTTING_DOWN = "server_shutting_down"
    QUOTA_EXCEEDED = "quota_exceeded"


@dataclass(frozen=True, slots=True)
class Refusal:
    code: RefusalCode = RefusalCode.NOT_AUTHORIZED
    reason: str = ""


class SessionControl(Protocol):
    """What a handler may do to a live session (both are fire-and-forget ``tell``s)."""

    def update_grant(self, grant: Grant) -> None: ...

    def disconnect(self, refusal: Refusal) -> None: ...


@dataclass(frozen=True, eq=False)
class Session:
    """One device connection as handlers see it. Immutable once the CONNECT (or request) has been read."""

    id: int
    listener: str
    protocol: str
    remote_addr: tuple[str, int]
    protocol_version: int = 0
    client_id: str = ""
    username: str | None = None
    password: bytes | None = field(default=None, repr=False)
    peer_cert: bytes | None = field(default=None, repr=False)
    identity: str | None = None
    peer_sans: tuple[str, ...] = ()  # the client certificate's subject alternative names
    control: SessionControl | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        pw = "****" if self.password is not None else None
        return (
            f"Session(id={self.id}, listener={self.listener!r}, protocol={self.protocol!r}, "
            f"v={self.protocol_version}, client_id={self.client_id!r}, username={self.username!r}, "
            f"password={pw}, identity={self.identity!r}, remote={self.remote_addr[0]}:{self.remote_addr[1]})"
        )


@runtime_checkable
class Interceptor(Protocol):
    """Rewrites packets inline on the data plane, in both directions.

    Returns the packet (the same object or a new one) to pass it on, or None to drop it. A dropped QoS 1/2
    PUBLISH is acknowledged to its sender as delivered: the interceptor consumed it. Uplink interceptors run
    after the grant's checks (checks see what the device sent); downlink interceptors run before the delivery
    check (the check sees what the device would receive).
    """

    def intercept(self, session: Session, packet: Any, direction: Direction) -> Any | None: ...


class Grant:
    """What one session may do. Built once per CONNECT; never mutated; replaced to change policy.

    The default implementation answers from two ACLs of MQTT topic filters. Subclass and override the
    ``auth_*`` methods for per-packet logic; keep them fast and free of I/O: they run inline for every packet.

    ``take_client_id``: this session may use an MQTT client id bound to another identity (see
    ``actors/client_ids.py``; the binding then moves to this session's identity). Off by default: a
    client id belongs to the identity that first claimed it. The bridge's own client id stays reserved.
    """

    __slots__ = (
        "deliver_all",
        "deliver_by_topic",
        "interceptors",
        "publish",
        "publish_all",
        "publish_by_topic",
        "subscribe",
        "take_client_id",
    )

    def __init__(
        self,
        publish: TopicMatcher | Iterable[str] = (),
        subscribe: TopicMatcher | Iterable[str] = (),
        interceptors: Iterable[Interceptor] = (),
        *,
        take_client_id: bool = False,
    ) -> None:
        self.publish = publish if isinstance(publish, TopicMatcher) else TopicMatcher(publish)
        self.subscribe = subscribe if isinstance(subscribe, TopicMatcher) else TopicMatcher(subscribe)
        self.interceptors: tuple[Interceptor, ...] = tuple(interceptors)
        self.take_client_id = take_client_id
        cls = type(self)
        # Fast paths for the data plane: skip topic parsing entirely when nothing can be refused.
        self.publish_all = (
            self.publish.allow_all and cls.auth_publish is Grant.auth_publish and not self.interceptors
        )
        self.deliver_all = (
            self.subscribe.allow_all and cls.auth_deliver is Grant.auth_deliver and not self.interceptors
        )
        # The answer depends on the topic alone (not the payload), so a session may remember it per topic.
        self.publish_by_topic = cls.auth_publish is Grant.auth_publish
        self.deliver_by_topic = cls.auth_deliver is Grant.auth_deliver

    @classmethod
    def everything(cls) -> Grant:
        return cls(("#",), ("#",))

    @classmethod
    def nothing(cls) -> Grant:
        return cls((), ())

    def auth_publish(self, topic: str, payload: bytes) -> bool:
        return self.publish.allows_topic(topic)

    def auth_will(self, topic: str, payload: bytes) -> bool:
        return self.auth_publish(topic, payload)

    def auth_subscribe(self, topic_filter: str) -> bool:
        return self.subscribe.allows_filter(topic_filter)

    def auth_unsubscribe(self, topic_filter: str) -> bool:
        return True

    def auth_deliver(self, topic: str) -> bool:
        """May a message on ``topic`` be delivered to this device (downlink PUBLISH)?"""
        return self.subscribe.allows_topic(topic)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(publish={self.publish!r}, subscribe={self.subscribe!r})"


class CombinedGrant(Grant):
    """Every grant of the chain must agree (the intersection); interceptors run in chain order."""

    __slots__ = ("parts",)

    def __init__(self, parts: Iterable[Grant]) -> None:
        self.parts = tuple(parts)
        super().__init__(
            ("#",),
            ("#",),
            itertools.chain.from_iterable(p.interceptors for p in self.parts),
            take_client_id=all(p.take_client_id for p in self.parts),
        )
        self.publish_all = all(p.publish_all for p in self.parts) and not self.interceptors
        self.deliver_all = all(p.deliver_all for p in self.parts) and not self.interceptors
        self.publish_by_topic = all(p.publish_by_topic for p in self.parts)
        self.deliver_by_topic = all(p.deliver_by_topic for p in self.parts)

    def auth_publish(self, topic: str, payload: bytes) -> bool:
        return all(p.auth_publish(topic, payload) for p in self.parts)

    def auth_will(self, topic: str, payload: bytes) -> bool:
        return all(p.auth_will(topic, payload) for p in self.parts)

    def auth_subscribe(self, topic_filter: str) -> bool:
        return all(p.auth_subscribe(topic_filter) for p in self.parts)

    def auth_unsubscribe(self, topic_filter: str) -> bool:
        return all(p.auth_unsubscribe(topic_filter) for p in self.parts)

    def auth_deliver(self, topic: str) -> bool:
        return all(p.auth_deliver(topic) for p in self.parts)

    def __repr__(self) -> str:
        return f"CombinedGrant({list(self.parts)!r})"


@dataclass(frozen=True, slots=True)
class Message:
    """A cross-protocol message routed by the Router (bridge traffic; never proxied device bytes)."""

    kind: str
    topic: str
    payload: bytes = b""
    source: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
