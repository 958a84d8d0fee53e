"""The subscription hub: who holds which MQTT topic filter, and who wants a message on a given topic.

One reference-counted book of (holder, filter) pairs, used by every part that shares one MQTT session
among many interested parties: the XMPP bridge (holders are JIDs, ``bridge/subscriptions.py``), the CoAP
bridge (holders are observation keys, ``bridge/coap_mqtt.py``) and the bridge's MQTT session itself
(holders are the bridges, ``protocols/mqtt/bridge_client.py``). Protocol-neutral: a holder is any
hashable value.

``add`` says when a filter gets its first holder (subscribe on the broker), ``remove`` when it loses its
last one (unsubscribe); ``holders_for(topic)`` answers the fan-out question for an incoming message. Fan-out
is the hot path: exact filters are a dict look-up, wildcard filters are tried in turn, and the answer is
memoised per topic until the book changes (changes are rare, messages are many).

Not thread-safe: owned by one actor (or one thread).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

from .topics import filter_error, matches

__all__ = ["SubscriptionHub"]

H = TypeVar("H", bound=Hashable)


class SubscriptionHub(Generic[H]):
    """(holder, filter) pairs, counted per filter. See the module docstring."""

    _MEMO_MAX = 4096

    __slots__ = ("_by_holder", "_empty", "_exact", "_memo", "_wild")

    def __init__(self) -> None:
        self._by_holder: dict[H, set[str]] = {}
        self._exact: dict[str, set[H]] = {}  # filter without wildcards -> holders
        self._wild: dict[str, set[H]] = {}  # filter with + or # -> holders
        self._memo: dict[str, frozenset[H]] = {}
        self._empty: frozenset[H] = frozenset()

    def _index(self, topic_filter: str) -> dict[str, set[H]]:
        return self._wild if ("+" in topic_filter or "#" in topic_filter) else self._exact

    # -- changes ---------------------------------------------------------------------------------------

    def add(self, holder: H, topic_filter: str) -> bool:
        """Record the pair; True when ``topic_filter`` had no holder before (subscribe on the broker).
        Adding a pair already held changes nothing and returns False. An invalid filter: ValueError."""
        err = filter_error(topic_filter)
        if err:
            raise ValueError(f"invalid filter {topic_filter!r}: {err}")
        mine = self._by_holder.setdefault(holder, set())
        if topic_filter in mine:
            return False
        mine.add(topic_filter)
        index = self._index(topic_filter)
        holders = index.get(topic_filter)
        first = holders is None
        if holders is None:
            holders = index[topic_filter] = set()
        holders.add(holder)
        self._memo.clear()
        return first

    def remove(self, holder: H, topic_filter: str) -> bool:
        """Drop the pair; True when it was the filter's last one (unsubscribe on the broker). Removing a
        pair not held changes nothing and returns False."""
        mine = self._by_holder.get(holder)
        if mine is None or topic_filter not in mine:
            return False
        mine.discard(topic_filter)
        if not mine:
            del self._by_holder[holder]
        index = self._index(topic_filter)
        holders = index[topic_filter]
        holders.discard(holder)
        self._memo.clear()
        if holders:
            return False
        del index[topic_filter]
        return True

    def remove_holder(self, holder: H) -> list[str]:
        """Drop every pair of ``holder``; returns the filters that lost their last holder (sorted)."""
        return [f for f in sorted(self._by_holder.get(holder, ())) if self.remove(holder, f)]

    def load(self, pairs: Mapping[H, Iterable[str]] | Iterable[tuple[H, str]]) -> None:
        """Add many: a mapping holder -> filters, or (holder, filter) pairs. The caller then subscribes
        ``filters()``."""
        if isinstance(pairs, Mapping):
            for holder, filters in pairs.items():
                for topic_filter in filters:
                    self.add(holder, topic_filter)
        else:
            for holder, topic_filter in pairs:
                self.add(holder, topic_filter)

    # -- questions -------------------------------------------------------------------------------------

    def has(self, holder: H, topic_filter: str) -> bool:
        return topic_filter in self._by_holder.get(holder, ())

    def filters_of(self, holder: H) -> frozenset[str]:
        return frozenset(self._by_holder.get(holder, ()))

    def holders(self) -> frozenset[H]:
        """Every holder with at least one filter."""
        return frozenset(self._by_holder)

    def holders_of(self, topic_filter: str) -> frozenset[H]:
        """The holders of exactly ``topic_filter`` (not of the filters matching it)."""
        held = self._index(topic_filter).get(topic_filter)
        return frozenset(held) if held else self._empty

    def filters(self) -> frozenset[str]:
        """Every distinct filter: what the broker connection must be subscribed to."""
        return frozenset(self._exact) | frozenset(self._wild)

    def count(self, topic_filter: str) -> int:
        """How many holders ``topic_filter`` has."""
        held = self._index(topic_filter).get(topic_filter)
        return len(held) if held else 0

    def holders_for(self, topic: str) -> frozenset[H]:
        """The holders of a filter that matches ``topic`` (each once, however many of its filters match)."""
        ans = self._memo.get(topic)
        if ans is not None:
            return ans
        found: set[H] = set()
        exact = self._exact.get(topic)
        if exact:
            found |= exact
        for f, holders in self._wild.items():
            if matches(f, topic):
                found |= holders
        ans = frozenset(found) if found else self._empty
        if len(self._memo) >= self._MEMO_MAX:
            self._memo.clear()
        self._memo[topic] = ans
        return ans

    def __len__(self) -> int:
        """The number of (holder, filter) pairs."""
        return sum(len(fs) for fs in self._by_holder.values())

    def __bool__(self) -> bool:
        return bool(self._by_holder)
