"""The bridge's JID -> filter registry: reference counts and fan-out."""

from __future__ import annotations

import pytest

from ferryman.bridge.subscriptions import SubscriptionRegistry

A = "alice@localhost"
B = "bob@localhost"


def test_refcount_first_and_last() -> None:
    r = SubscriptionRegistry()
    assert r.add(A, "a/#") is True
    assert r.add(B, "a/#") is False
    assert r.add(A, "a/#") is False  # duplicate: no-op
    assert r.all_filters() == {"a/#"}
    assert r.remove(A, "a/#") is False
    assert r.remove(A, "a/#") is False  # not held any more
    assert r.all_filters() == {"a/#"}
    assert r.remove(B, "a/#") is True
    assert r.all_filters() == frozenset()
    assert r.jids() == frozenset()
    assert len(r) == 0


def test_filters_of_and_has() -> None:
    r = SubscriptionRegistry()
    r.add(A, "x")
    r.add(A, "y/+")
    assert r.filters_of(A) == {"x", "y/+"}
    assert r.filters_of(B) == frozenset()
    assert r.has(A, "x") and not r.has(B, "x")
    assert len(r) == 2


def test_remove_unknown() -> None:
    r = SubscriptionRegistry()
    assert r.remove(A, "nothing") is False
    assert r.remove_jid(A) == []


def test_invalid_filter_refused() -> None:
    r = SubscriptionRegistry()
    with pytest.raises(ValueError):
        r.add(A, "a/#/b")


def test_jids_for_fanout() -> None:
    r = SubscriptionRegistry()
    r.add(A, "dev/1/temp")
    r.add(A, "dev/+/temp")  # overlapping: A still gets one copy
    r.add(B, "dev/#")
    r.add(B, "other")
    assert r.jids_for("dev/1/temp") == {A, B}
    assert r.jids_for("dev/2/temp") == {A, B}
    assert r.jids_for("dev/2/hum") == {B}
    assert r.jids_for("dev") == {B}  # '#' matches the parent level
    assert r.jids_for("other") == {B}
    assert r.jids_for("nothing") == frozenset()


def test_wildcards_do_not_match_dollar_topics() -> None:
    r = SubscriptionRegistry()
    r.add(A, "#")
    r.add(B, "$SYS/#")
    assert r.jids_for("$SYS/broker/uptime") == {B}
    assert r.jids_for("a") == {A}


def test_memo_invalidated_by_changes() -> None:
    r = SubscriptionRegistry()
    r.add(A, "t/+")
    assert r.jids_for("t/1") == {A}
    r.add(B, "t/1")
    assert r.jids_for("t/1") == {A, B}
    r.remove(A, "t/+")
    assert r.jids_for("t/1") == {B}
    r.remove_jid(B)
    assert r.jids_for("t/1") == frozenset()


def test_memo_is_bounded() -> None:
    r = SubscriptionRegistry()
    r.add(A, "#")
    for i in range(SubscriptionRegistry._MEMO_MAX + 10):
        assert r.jids_for(f"t/{i}") == {A}
    assert len(r._memo) <= SubscriptionRegistry._MEMO_MAX


def test_remove_jid_returns_orphaned_filters() -> None:
    r = SubscriptionRegistry()
    r.add(A, "shared")
    r.add(B, "shared")
    r.add(A, "only-a/#")
    r.add(A, "only-a-too")
    assert r.remove_jid(A) == ["only-a-too", "only-a/#"]
    assert r.all_filters() == {"shared"}
    assert r.filters_of(A) == frozenset()


def test_load_from_store_shape() -> None:
    r = SubscriptionRegistry()
    r.load({A: {"a", "b/#"}, B: {"a"}})
    assert r.all_filters() == {"a", "b/#"}
    assert r.jids_for("a") == {A, B}
    r2 = SubscriptionRegistry()
    r2.load([(A, "x"), (B, "x")])
    assert r2.jids_for("x") == {A, B}
