"""MQTT topic names and filters: validation and matching.

Lives in ``actors`` because grants (the authorization contract every protocol shares) match topics; the MQTT
codec and the bridge use the same functions, so there is one definition of what a valid filter is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ferryman.config.topics import filter_error

__all__ = [
    "TopicMatcher",
    "filter_error",
    "matches",
    "topic_name_error",
    "validate_topic_filter",
    "validate_topic_name",
]

#: What MQTT 1.5.4 says a UTF-8 string SHOULD NOT hold and what mosquitto refuses by closing the link
#: (its ``mosquitto_validate_utf8``): the C0 and C1 control characters and the Unicode non-characters.
_UNSAFE = re.compile(
    "[\x01-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff"
    + "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(1, 17))
    + "]"
)


def _unsafe_error(text: str) -> str | None:
    """Why ``text`` is not a string a broker takes in a PUBLISH or SUBSCRIBE (beyond U+0000), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not well-formed UTF-8 (a lone surrogate)"
    bad = _UNSAFE.search(text)
    if bad is not None:
        return f"U+{ord(bad.group()):04X} (a control character or non-character) is not allowed"
    return None


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


def validate_topic_name(topic: str) -> str | None:
    """Why ``topic`` may not enter the broker as a PUBLISH topic name, or None: the one rule for every topic
    the gateway itself publishes (the bridge's session: HTTP publish mode, CoAP -> MQTT, XMPP ``publish``).

    ``topic_name_error`` (what the MQTT codec checks on a device's PUBLISH) plus: not empty (the bridge
    has no topic alias), well-formed UTF-8, and none of the code points MQTT 1.5.4 says SHOULD NOT be
    sent, which mosquitto answers by closing the connection. On the bridge's one shared session such a
    topic would cut every user off, so it is refused here. Cost: linear in the topic's length."""
    if not topic:
        return "empty topic name"
    return topic_name_error(topic) or _unsafe_error(topic)


def validate_topic_filter(topic_filter: str) -> str | None:
    """Why ``topic_filter`` may not be subscribed on the broker, or None: ``filter_error`` (MQTT 4.7, as the
    codec checks a device's SUBSCRIBE) plus the UTF-8 rules of ``validate_topic_name``."""
    err = filter_error(topic_filter)
    if err:
        return err
    if len(topic_filter.encode("utf-8", "surrogatepass")) > 65535:
        return "topic filter longer than 65535 bytes"
    return _unsafe_error(topic_filter)


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
