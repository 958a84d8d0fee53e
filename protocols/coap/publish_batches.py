"""Publishes of CoAP requests, crossing to the hub in batches.

One request = one crossing each way would cost a ``gevent.spawn``, a wake-up of the hub and one of the
asyncio loop per request (bench/coap_publish.py). The batcher collects the publishes that arrive while the hub
is busy, hands them over with one ``to_hub``, queues them all on the bridge's MQTT session
(``MqttPort.publish_many``: one actor message for the lot), waits for their acknowledgements in one
greenlet, and answers every waiting request with one ``call_soon_threadsafe``. Order is kept: publishes
reach the MQTT session in arrival order (the batches' greenlets start in hand-over order and each queues
its whole batch before it first waits).

One entry point, in the asyncio thread: ``submit(..., done)`` (a plain callback, no future and no task per
request), called by the request core of publish mode (``publish_core.PublishCore``) for both transports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import gevent

from ferryman.actors.asyncio_host import AsyncioHost

from .publish import MqttPort

__all__ = ["PublishBatcher"]

Item = tuple[str, bytes, int, bool]
#: Called in the asyncio thread with None once the MQTT session took the message, else why not.
Done = Callable[[str | None], None]

#: At most this many publishes per crossing (bounds the wait of the first one on the last one's PUBACK).
_BATCH = 128
#: Batches in the hub at once: the next batch is queued on the MQTT session while the previous one waits
#: for its acknowledgements.
_IN_FLIGHT = 2


class PublishBatcher:
    """Owned by one request core (publish_core.py); ``submit`` is called in the asyncio thread."""

    def __init__(self, host: AsyncioHost, timeout: float) -> None:
        self.host = host
        self.timeout = timeout
        self._items: list[Item] = []
        self._dones: list[Done] = []
        self._in_flight = 0  # batches in the hub
        self._scheduled = False  # a hand-over is scheduled at the end of this loop iteration

    def submit(self, port: MqttPort, item: Item, done: Done) -> None:
        """Queues ``item``; ``done(result)`` is called later in the asyncio thread."""
        self._items.append(item)
        self._dones.append(done)
        if self._in_flight < _IN_FLIGHT and not self._scheduled:
            # Hand over after the datagrams the loop has already read in this iteration: one crossing for
            # all of them instead of one for the first and one for the rest.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send, port)

    def _send(self, port: MqttPort) -> None:  # asyncio thread
        self._scheduled = False
        if not self._items or self._in_flight >= _IN_FLIGHT:
            return
        items, dones = self._items[:_BATCH], self._dones[:_BATCH]
        del self._items[:_BATCH], self._dones[:_BATCH]
        self._in_flight += 1
        loop = asyncio.get_running_loop()

        def finished(results: list[str | None]) -> None:  # asyncio thread
            self._in_flight -= 1
            for done, result in zip(dones, results, strict=True):
                try:
                    done(result)
                except Exception as exc:  # one bad callback must not strand the others
                    loop.call_exception_handler({"message": "coap publish callback failed", "exception": exc})
            if self._items and not self._scheduled:
                self._send(port)

        def work() -> None:  # a greenlet of the hub
            try:
                results = _publish_all(port, items, self.timeout)
            except Exception as exc:
                results = [f"publish failed: {exc!r}"] * len(items)
            loop.call_soon_threadsafe(finished, results)

        self.host.to_hub(gevent.spawn, work)
        if self._items and self._in_flight < _IN_FLIGHT:
            self._send(port)


def _publish_all(port: MqttPort, items: list[Item], timeout: float) -> list[str | None]:
    many: Any = getattr(port, "publish_many", None)
    acks = many(items) if many is not None else [port.publish(*item) for item in items]
    results: list[str | None] = []
    deadline = time.monotonic() + timeout  # one timeout for the batch, not one per message
    for ack in acks:
        if ack.wait(max(0.0, deadline - time.monotonic())):
            results.append(None)
        else:
            results.append(ack.reason or f"not acknowledged within {timeout}s")
    return results
