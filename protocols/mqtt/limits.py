"""Per-connection limits of the data plane: publish rate (packets and bytes per second)."""

from __future__ import annotations

import time

from ferryman.actors.rate import TokenBucket

__all__ = ["RateLimiter"]


class RateLimiter:
    """Two token buckets (``actors/rate.py``), PUBLISH packets/s and bytes/s. ``take`` spends tokens and
    returns how long the sender is in debt (0.0 when within its rate): the pump sleeps that long before
    forwarding (throttle: TCP backpressure slows the device and nothing is lost) or disconnects it."""

    __slots__ = ("_bytes", "_packets", "byte_burst", "byte_rate", "packet_burst", "packet_rate")

    def __init__(self, packet_rate: float, packet_burst: float, byte_rate: float) -> None:
        self.packet_rate = packet_rate
        self.packet_burst = packet_burst or packet_rate
        self.byte_rate = byte_rate
        self.byte_burst = byte_rate
        self._packets = TokenBucket(packet_rate, self.packet_burst) if packet_rate else None
        self._bytes = TokenBucket(byte_rate, self.byte_burst) if byte_rate else None

    @classmethod
    def for_settings(cls, settings: object) -> RateLimiter | None:
        rate = float(getattr(settings, "publish_rate", 0.0))
        byte_rate = float(getattr(settings, "publish_bytes_rate", 0.0))
        if not rate and not byte_rate:
            return None
        return cls(rate, float(getattr(settings, "publish_burst", 0.0)), byte_rate)

    def take(self, packets: int, nbytes: int) -> float:
        now = time.monotonic()
        debt = 0.0
        if self._packets is not None:
            debt = self._packets.debit(packets, now)
        if self._bytes is not None:
            debt = max(debt, self._bytes.debit(nbytes, now))
        return debt
