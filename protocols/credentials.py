"""Credentials and the cache of the handler chain's decisions, for the protocols without a CONNECT.

An HTTP request and a CoAP request each carry their credentials; asking the chain for every request would
cost an actor ask per handler and, for a ``password_hash`` user, milliseconds of hashing. Both protocols
remember the chain's decision per key in a :class:`DecisionCache` (HTTP: per keep-alive connection, by
credentials; CoAP: per listener, by (peer address, credentials)) and differ only in how they ask (HTTP in
the request's greenlet, CoAP from the asyncio thread through the hub) and in their refusal answers (HTTP
401 / 403, CoAP 4.01 / 4.03), which stay in ``protocols/http`` and ``protocols/coap``.

The cache's rules, the same for both:

- A decision is remembered while it is used: ``ttl`` seconds after its last use (``math.inf``: for the
  life of the cache), at most ``max_entries`` of them, least recently used first out. An entry with
  ``watchers`` (a CoAP observation) is neither expired nor evicted.
- Grants are remembered, and the refusals that depend on the credentials alone (:data:`CACHEABLE`); other
  refusals (a handler timed out, a quota) are answered and asked again next time.
- ``on_connect`` is told when a key is first granted, ``on_disconnect`` exactly once when that entry is
  forgotten (expired, evicted, replaced, revoked or the cache closed).
- Live policy changes go through the Session's :class:`CachedSessionControl`: ``update_grant`` replaces the
  decision at once; ``disconnect`` revokes it (the next use asks the chain afresh) and calls the
  protocol's ``on_revoke`` hook (CoAP ends the key's observations).

Not thread-safe: one owner (a connection's greenlet, or the asyncio thread); ``CachedSessionControl`` is
called from handler actors and only sets fields.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ferryman.actors.contracts import Grant, Refusal, RefusalCode, Session

__all__ = [
    "CACHEABLE",
    "INVALID",
    "CachedDecision",
    "CachedSessionControl",
    "Credentials",
    "DecisionCache",
]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presented: a username and password (either may be None: a bearer token is a
    password without a username), the identity a secure transport verified (CoAP's DTLS identity), and how
    they were given (``scheme``: HTTP's ``basic`` / ``bearer`` / ``certificate``; "" when it says nothing)."""

    username: str | None
    password: bytes | None
    identity: str | None = None
    scheme: str = ""


#: Credentials that could not be used (bad base64, an unknown scheme, an empty CoAP ``auth``): HTTP 401,
#: CoAP 4.01. Compared by identity (``creds is INVALID``).
INVALID = Credentials(None, None, scheme="invalid")

#: Refusals that depend on the credentials alone: safe to remember.
CACHEABLE = frozenset({RefusalCode.BAD_CREDENTIALS, RefusalCode.NOT_AUTHORIZED, RefusalCode.BANNED})


@dataclass(eq=False)
class CachedDecision(Generic[K]):
    """One remembered decision: the Session the chain was asked with and its live answer."""

    key: K
    session: Session
    decision: Grant | Refusal
    ttl: float = math.inf
    expires: float = math.inf
    revoked: bool = False
    notified: bool = False  # on_connect was told (so on_disconnect will be)
    #: Keep the entry while they live; the protocol's ``on_revoke`` hook ends them (CoAP observations).
    watchers: list[Callable[[Refusal], None]] = field(default_factory=list, repr=False)

    @property
    def grant(self) -> Grant | None:
        """The current grant; None once refused or revoked."""
        decision = self.decision
        return decision if isinstance(decision, Grant) else None

    def touch(self, now: float | None = None) -> None:
        """Used now: remembered for another ``ttl``."""
        self.expires = (time.monotonic() if now is None else now) + self.ttl

    def usable(self, now: float) -> bool:
        """Not revoked, and not expired (or held by a watcher)."""
        return not self.revoked and (self.expires > now or bool(self.watchers))


class CachedSessionControl:
    """The ``SessionControl`` of a cached decision (called from handler actors; never blocks)."""

    __slots__ = ("entry", "on_revoke")

    def __init__(self, on_revoke: Callable[[CachedDecision[Any], Refusal], None] | None = None) -> None:
        self.entry: CachedDecision[Any] | None = None
        self.on_revoke = on_revoke

    def update_grant(self, grant: Grant) -> None:
        if self.entry is not None:
            self.entry.decision = grant

    def disconnect(self, refusal: Refusal) -> None:
        entry = self.entry
        if entry is None:
            return
        entry.decision = refusal
        entry.revoked = True
        if self.on_revoke is not None:
            self.on_revoke(entry, refusal)


class DecisionCache(Generic[K]):
    """key -> the chain's decision, by the rules of the module docstring."""

    __slots__ = ("_entries", "max_entries", "on_connect", "on_disconnect", "ttl")

    def __init__(
        self,
        *,
        on_connect: Callable[[Session, Grant], object],
        on_disconnect: Callable[[Session, str], object],
        ttl: float = math.inf,
        max_entries: int = 4096,
    ) -> None:
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[K, CachedDecision[K]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def lookup(self, key: K) -> CachedDecision[K] | None:
        """The remembered decision (a hit: used now, so kept another ``ttl`` and made the most recently
        used), or None: not remembered, or forgotten now because revoked or expired. Then the caller asks
        the chain and hands the answer to :meth:`admit`."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if entry.usable(now):
            entry.expires = now + self.ttl
            self._entries.move_to_end(key)
            return entry
        self.drop(key, "revoked" if entry.revoked else "expired")
        return None

    def admit(
        self, key: K, session: Session, decision: Grant | Refusal, control: CachedSessionControl
    ) -> CachedDecision[K]:
        """The chain's answer for ``key``: told to ``on_connect`` if a grant, remembered if cacheable
        (replacing an older entry of ``key``), and returned either way."""
        entry: CachedDecision[K] = CachedDecision(key, session, decision, self.ttl)
        entry.touch()
        control.entry = entry
        if isinstance(decision, Grant):
            self.on_connect(session, decision)
            entry.notified = True
        elif decision.code not in CACHEABLE:
            return entry  # e.g. the handler timed out: ask again next time
        old = self._entries.pop(key, None)
        if old is not None:
            self._forget(old, "replaced")
        self._entries[key] = entry
        if len(self._entries) > self.max_entries:
            self._evict()
        return entry

    def _evict(self) -> None:
        """Drops the least recently used entries without watchers until within ``max_entries``."""
        for key in list(self._entries):
            if len(self._entries) <= self.max_entries:
                return
            if not self._entries[key].watchers:
                self.drop(key, "evicted")

    def drop(self, key: K, reason: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._forget(entry, reason)

    def _forget(self, entry: CachedDecision[K], reason: str) -> None:
        if entry.notified:
            entry.notified = False
            self.on_disconnect(entry.session, reason)

    def sweep(self) -> int:
        """Forgets the entries idle for ``ttl`` seconds and not watched; how many."""
        now = time.monotonic()
        stale = [k for k, e in self._entries.items() if e.expires <= now and not e.watchers]
        for key in stale:
            self.drop(key, "expired")
        return len(stale)

    def close(self, reason: str) -> None:
        """The owner stops: every entry that had on_connect gets on_disconnect."""
        for key in list(self._entries):
            self.drop(key, reason)
