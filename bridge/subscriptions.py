"""Which JID subscribed to which MQTT filter, with one broker subscription per distinct filter.

The bridge holds a single MQTT connection. Every distinct filter is subscribed once on the broker; the
registry counts the JIDs holding it (``add`` says when the first arrives, ``remove`` when the last leaves) and
answers the fan-out question ``jids_for(topic)`` for every incoming message. Fan-out is the hot path: exact
filters are a dict lookup, wildcard filters are tried in turn, and the answer is memoised per topic until the
registry changes (changes are rare chat commands, messages are many).
"""

from __future__ import annotations

from collections.abc import Iterable

from ferryman.actors.topics import filter_error, matches

__all__ = ["SubscriptionRegistry"]

_NOBODY: frozenset[str] = frozenset()


class SubscriptionRegistry:
    """Not thread-safe: owned by one actor."""

    _MEMO_MAX = 4096

    def __init__(self) -> None:
        self._by_jid: dict[str, set[str]] = {}
        self._exact: dict[str, set[str]] = {}  # filter without wildcards -> JIDs
        self._wild: dict[str, set[str]] = {}  # filter with + or # -> JIDs
        self._memo: dict[str, frozenset[str]] = {}

    def _index(self, topic_filter: str) -> dict[str, set[str]]:
        return self._wild if ("+" in topic_filter or "#" in topic_filter) else self._exact

    def add(self, jid: str, topic_filter: str) -> bool:
        """Record the subscription; True when ``topic_filter`` had no subscriber before (subscribe on the
        broker). Adding a subscription the JID already holds changes nothing and returns False."""
        err = filter_error(topic_filter)
        if err:
            raise ValueError(f"invalid filter {topic_filter!r}: {err}")
        mine = self._by_jid.setdefault(jid, set())
        if topic_filter in mine:
            return False
        mine.add(topic_filter)
        index = self._index(topic_filter)
        jids = index.get(topic_filter)
        first = jids is None
        if jids is None:
            jids = index[topic_filter] = set()
        jids.add(jid)
        self._memo.clear()
        return first

    def remove(self, jid: str, topic_filter: str) -> bool:
        """Drop the subscription; True when it was the filter's last one (unsubscribe on the broker).
        Removing a subscription the JID does not hold changes nothing and returns False."""
        mine = self._by_jid.get(jid)
        if mine is None or topic_filter not in mine:
            return False
        mine.discard(topic_filter)
        if not mine:
            del self._by_jid[jid]
        index = self._index(topic_filter)
        jids = index[topic_filter]
        jids.discard(jid)
        self._memo.clear()
        if jids:
            return False
        del index[topic_filter]
        return True

    def remove_jid(self, jid: str) -> list[str]:
        """Drop every subscription of ``jid``; returns the filters that lost their last subscriber."""
        return [f for f in sorted(self._by_jid.get(jid, ())) if self.remove(jid, f)]

    def has(self, jid: str, topic_filter: str) -> bool:
        return topic_filter in self._by_jid.get(jid, ())

    def filters_of(self, jid: str) -> frozenset[str]:
        return frozenset(self._by_jid.get(jid, ()))

    def jids(self) -> frozenset[str]:
        return frozenset(self._by_jid)

    def all_filters(self) -> frozenset[str]:
        """Every distinct filter: what the broker connection must be subscribed to."""
        return frozenset(self._exact) | frozenset(self._wild)

    def load(self, subscriptions: dict[str, set[str]] | Iterable[tuple[str, str]]) -> None:
        """Add many (e.g. ``Store.load()``'s answer); the caller then subscribes ``all_filters()``."""
        pairs = (
            ((j, f) for j, fs in subscriptions.items() for f in fs)
            if isinstance(subscriptions, dict)
            else subscriptions
        )
        for jid, topic_filter in pairs:
            self.add(jid, topic_filter)

    def jids_for(self, topic: str) -> frozenset[str]:
        """The JIDs holding a filter that matches ``topic`` (each once, however many of its filters match)."""
        ans = self._memo.get(topic)
        if ans is not None:
            return ans
        found: set[str] = set()
        exact = self._exact.get(topic)
        if exact:
            found |= exact
        for f, jids in self._wild.items():
            if matches(f, topic):
                found |= jids
        ans = frozenset(found) if found else _NOBODY
        if len(self._memo) >= self._MEMO_MAX:
            self._memo.clear()
        self._memo[topic] = ans
        return ans

    def __len__(self) -> int:
        """The number of (JID, filter) subscriptions."""
        return sum(len(fs) for fs in self._by_jid.values())
