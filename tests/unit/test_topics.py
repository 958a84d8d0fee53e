"""Topic matching and the ACL questions grants ask: may this topic be published, this filter subscribed."""

from __future__ import annotations

import pytest

from ferryman.actors.topics import TopicMatcher, filter_covers, filter_error, matches, topic_name_error


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),  # '#' also matches the parent level (MQTT 4.7.1.2)
        ("a/#", "a/b/c", True),
        ("+/+", "/x", True),  # empty levels are levels
        ("#", "$SYS/x", False),  # wildcards at the first level never match $ topics (4.7.2)
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/b/", False),
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("acl", "requested", "expected"),
    [
        ("dev1/#", "dev1/+/temp", True),
        ("dev1/#", "dev1/#", True),
        ("dev1/#", "dev1", True),
        ("dev1/+", "dev1/#", False),  # '#' asks for more than '+' grants
        ("dev1/+", "dev1/+", True),
        ("dev1/+", "dev1/x", True),
        ("dev1/x", "dev1/+", False),
        ("#", "#", True),
        ("#", "$SYS/#", False),  # '#' grants no $ topics
        ("+/x", "$SYS/x", False),
        ("a/#", "$share/g/a/b", True),  # a shared subscription is judged by the filter it shares
        ("a/#", "$share/g/b/#", False),
    ],
)
def test_filter_covers(acl: str, requested: str, expected: bool) -> None:
    assert filter_covers(acl, requested) is expected


def test_matcher_answers_topics_and_filters() -> None:
    m = TopicMatcher(["dev1/#", "public/+", "exact/topic"])
    assert m.allows_topic("dev1/a/b") and m.allows_topic("public/x") and m.allows_topic("exact/topic")
    assert not m.allows_topic("public/x/y") and not m.allows_topic("other")
    assert m.allows_filter("dev1/+/t") and not m.allows_filter("public/#")
    assert not TopicMatcher(()).allows_topic("a")
    everything = TopicMatcher.everything()
    assert everything.allow_all and everything.allows_topic("a/b") and not everything.allows_topic("$SYS/x")


def test_matcher_memo_is_bounded_and_keeps_answering() -> None:
    m = TopicMatcher(["t/#"])
    for i in range(TopicMatcher._MEMO_MAX * 2):
        assert m.allows_topic(f"t/{i}")
    assert len(m._memo) <= TopicMatcher._MEMO_MAX
    assert not m.allows_topic("u/1")


def test_matcher_refuses_invalid_acl_filters() -> None:
    with pytest.raises(ValueError, match="invalid ACL filter"):
        TopicMatcher(["a/#/b"])


@pytest.mark.parametrize(
    ("topic_filter", "error"),
    [("", "empty"), ("a/#/b", "'#'"), ("a+", "'+'"), ("a\x00", "U+0000"), ("a/+/#", None), ("#", None)],
)
def test_filter_error(topic_filter: str, error: str | None) -> None:
    got = filter_error(topic_filter)
    assert (got is None) if error is None else (got is not None and error in got)


def test_topic_name_error() -> None:
    assert topic_name_error("a/b") is None
    assert topic_name_error("a/+") is not None and topic_name_error("a/#") is not None
    assert topic_name_error("a\x00") is not None
