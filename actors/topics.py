"""MQTT topic names and filters: validation and matching.

Lives in ``actors`` because grants (the authorization contract every protocol shares) match topics; the MQTT
codec and the bridge use the same functions, so there is one definition of what a valid filter is.
"""

from __future__ import annotations

from collections.abc import Iterable

from ferryman.config.topics import filter_error

__all__ = [
    "TopicMatcher",
    "filter_error",
    "matches",
    "topic_name_error",
]


def topic_name_error(topic: str) -> str | None:
    """Why ``topic`` is not a valid PUBLISH topic name, or None. Empty names are the caller's business
    (MQTT 5 allows them with a topic alias)."""
    if "+" in topic or "#" in topic:
        return "wildcards are not allowed in a topic name"
    if "\x00" in topic:
        return "topic contains U+0000"
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return "topic longer than 65535 bytes"
    return None


def _split_shared(topic_filter: str) -> str:
    """The filter without a ``$share/<group>/`` prefix (MQTT 5 shared subscriptions)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` (MQTT 4.7: wildcards do not match ``$`` topics at the
    first level)."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def filter_covers(acl_filter: str, sub_filter: str) -> bool:
    """True when every topic matched by ``sub_filter`` is also matched by ``acl_filter``.

    Used to decide whether a client may SUBSCRIBE to a filter: ``dev1/#`` covers ``dev1/+/temp`` but
    ``dev1/+`` does not cover ``dev1/#``.
    """
    a = acl_filter.split("/")
    s = _split_shared(sub_filter).split("/")
    for i, al in enumerate(a):
        if al == "#":
            return not (i == 0 and s[0].startswith("$") and s[0] not in ("+", "#"))
        if i >= len(s):
            return False
        sl = s[i]
        if sl == "#":
            return False
        if al == "+":
            if i == 0 and sl.startswith("$"):
                return False
            continue
        if sl == "+" or al != sl:
            return False
    return len(a) == len(s)


class TopicMatcher:
    """A compiled, immutable set of ACL filters with a bounded memo of answers.

    ``allows_topic`` answers for PUBLISH topic names, ``allows_filter`` for SUBSCRIBE filters (the filter
    must be covered by one ACL filter). Exact filters are a set lookup; the rest are tried in order. The
    memo makes the common case (a device publishing to a handful of topics) one dict lookup per packet.
    """

    __slots__ = ("_exact", "_filters", "_memo", "_memo_filters", "allow_all", "filters")
    _MEMO_MAX = 4096

    def __init__(self, filters: Iterable[str]) -> None:
        self.filters: tuple[str, ...] = tuple(filters)
        for f in self.filters:
            err = filter_error(f)
            if err:
                raise ValueError(f"invalid ACL filter {f!r}: {err}")
        self.allow_all = "#" in self.filters
        self._exact = frozenset(f for f in self.filters if "+" not in f and "#" not in f)
        self._filters = tuple(f for f in self.filters if f not in self._exact)
        self._memo: dict[str, bool] = {}
        self._memo_filters: dict[str, bool] = {}

    @classmethod
    def everything(cls) -> TopicMatcher:
        return cls(("#",))

    @classmethod
    def nothing(cls) -> TopicMatcher:
        return cls(())

    def allows_topic(self, topic: str) -> bool:
        ans = self._memo.get(topic)
        if ans is None:
            if topic.startswith("$"):
                ans = topic in self._exact or any(matches(f, topic) for f in self._filters)
            else:
                ans = self.allow_all or topic in self._exact or any(matches(f, topic) for f in self._filters)
            if len(self._memo) >= self._MEMO_MAX:
                self._memo.clear()
            self._memo[topic] = ans
        return ans

    def allows_filter(self, topic_filter: str) -> bool:
        ans = self._memo_filters.get(topic_filter)
        if ans is None:
            ans = any(filter_covers(f, topic_filter) for f in self.filters)
            if len(self._memo_filters) >= self._MEMO_MAX:
                self._memo_filters.clear()
            self._memo_filters[topic_filter] = ans
        return ans

    def __repr__(self) -> str:
        return f"TopicMatcher({list(self.filters)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TopicMatcher) and self.filters == other.filters

    def __hash__(self) -> int:
        return hash(self.filters)
