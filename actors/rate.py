"""The token bucket: ``rate`` tokens a second, holding at most ``burst``.

One bucket, two ways to spend, for every limit of the gateway:

- ``take(n)`` refuses without spending (False) when fewer than ``n`` tokens are there: the limit answers
  "no" (the XMPP bridge's command rate, ``bridge/xmpp_mqtt.py``).
- ``debit(n)`` always spends, into debt if need be, and returns how many seconds the debt takes to pay
  off (0.0 within the rate): the caller waits that long (throttle) or gives up (the MQTT publish rate,
  ``protocols/mqtt/limits.py``).

Both refill from ``time.monotonic()``; a caller that checks several buckets at once passes ``now`` so
the clock is read once. Not thread-safe: one owner. Free of I/O; cheap enough for the data plane.
"""

from __future__ import annotations

import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second up to ``burst`` (``burst`` 0: ``rate``); full when made."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float = 0.0) -> None:
        self.rate = float(rate)
        self.burst = float(burst or rate)
        self.tokens = self.burst
        self.at = time.monotonic()

    def take(self, n: float = 1.0, now: float | None = None) -> bool:
        """Spend ``n`` tokens if there are that many (True), else spend nothing (False)."""
        if now is None:
            now = time.monotonic()
        tokens = self.tokens + (now - self.at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.at = now
        if tokens >= n:
            self.tokens = tokens - n
            return True
        self.tokens = tokens
        return False

    def debit(self, n: float, now: float | None = None) -> float:
        """Spend ``n`` tokens, into debt if need be; the seconds until the debt is paid (0.0: none)."""
        if now is None:
            now = time.monotonic()
        tokens = self.tokens + (now - self.at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.at = now
        tokens -= n
        self.tokens = tokens
        if tokens >= 0.0:
            return 0.0
        return -tokens / self.rate if self.rate else float("inf")
