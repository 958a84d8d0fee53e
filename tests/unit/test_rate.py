"""The one token bucket (actors/rate.py): refuse without spending (take), spend into debt (debit); and
its users: the MQTT publish RateLimiter and the XMPP bridge's command bucket. Time is passed in (``now``)
where the bucket allows it, so nothing here depends on the clock's speed."""

from __future__ import annotations

import pytest

from ferryman.actors.rate import TokenBucket
from ferryman.bridge.xmpp_mqtt import _Bucket
from ferryman.protocols.mqtt.limits import RateLimiter


def test_take_refuses_without_spending() -> None:
    b = TokenBucket(2.0, 3)
    t0 = b.at
    assert [b.take(now=t0) for _ in range(4)] == [True, True, True, False]
    assert b.tokens == pytest.approx(0.0)
    assert b.take(now=t0) is False  # a refusal spends nothing: still no debt
    assert b.tokens == pytest.approx(0.0)
    assert b.take(now=t0 + 0.5) is True  # 0.5 s at 2/s: one token
    assert b.take(now=t0 + 0.5) is False


def test_refill_stops_at_burst() -> None:
    b = TokenBucket(10.0, 2)
    t0 = b.at
    assert b.take(2, now=t0) is True
    assert b.take(3, now=t0 + 100.0) is False  # refilled to the burst, not beyond
    assert b.tokens == pytest.approx(2.0)


def test_burst_defaults_to_rate() -> None:
    assert TokenBucket(5.0).burst == 5.0


def test_debit_spends_into_debt_and_says_how_long() -> None:
    b = TokenBucket(10.0, 10)
    t0 = b.at
    assert b.debit(10, now=t0) == 0.0
    assert b.debit(5, now=t0) == pytest.approx(0.5)  # 5 tokens owed at 10/s
    assert b.tokens == pytest.approx(-5.0)
    assert b.take(now=t0 + 0.2) is False  # still in debt: take does not spend
    assert b.debit(0, now=t0 + 0.5) == 0.0  # paid off


def test_rate_limiter_takes_the_longer_debt_of_its_two_buckets() -> None:
    r = RateLimiter(10.0, 2.0, 100.0)
    assert r.take(2, 50) == 0.0
    debt = r.take(1, 250)  # packets: 1 owed at 10/s (0.1 s); bytes: 200 owed at 100/s (2 s)
    assert 1.0 < debt <= 2.0  # the byte debt (less what trickled in meanwhile), not the packet one
    assert RateLimiter(10.0, 0.0, 0.0).packet_burst == 10.0


def test_rate_limiter_for_settings() -> None:
    class S:
        publish_rate = 0.0
        publish_bytes_rate = 0.0
        publish_burst = 0.0

    assert RateLimiter.for_settings(S()) is None
    S.publish_bytes_rate = 1000.0
    r = RateLimiter.for_settings(S())
    assert r is not None and r.take(100, 10**6) > 0.0  # bytes only: packets are not limited


def test_the_xmpp_command_bucket_is_the_token_bucket() -> None:
    b = _Bucket(1.0, 2)
    assert isinstance(b, TokenBucket) and b.warned is False
    t0 = b.at
    assert [b.take(now=t0) for _ in range(3)] == [True, True, False]
