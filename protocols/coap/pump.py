"""Publishes of CoAP requests, crossing to the hub in batches.

One request = one crossing each way would cost a ``gevent.spawn``, a wake-up of the hub and one of the
asyncio loop per request (bench/coap_publish.py). The pump collects the publishes that arrive while the hub
is busy, hands them over with one ``to_hub``, queues them all on the bridge's MQTT session
(``MqttPort.publish_many``), waits for their acknowledgements in one greenlet, and answers every waiting
request with one ``call_soon_threadsafe``. Order is kept: publishes reach the MQTT session in arrival order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import gevent

from ferryman.actors.asyncio_host import AsyncioHost

from .publish import MqttPort

__all__ = ["PublishPump"]

Item = tuple[str, bytes, int, bool]

#: At most this many publishes per crossing (bounds the wait of the first one on the last one's PUBACK).
_BATCH = 64


class PublishPump:
    """Owned by one site; ``publish`` is called in the asyncio thread."""

    def __init__(self, host: AsyncioHost, timeout: float) -> None:
        self.host = host
        self.timeout = timeout
        self._queue: list[tuple[Item, asyncio.Future[str | None]]] = []
        self._in_flight = False  # a batch is in the hub: later publishes wait for the next one

    async def publish(self, port: MqttPort, topic: str, payload: bytes, qos: int, retain: bool) -> str | None:
        """None once the bridge's MQTT session took the message, else why not."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._queue.append(((topic, payload, qos, retain), future))
        if not self._in_flight:
            self._send(port)
        return await future

    def _send(self, port: MqttPort) -> None:  # asyncio thread
        batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
        if not batch:
            return
        self._in_flight = True
        loop = asyncio.get_running_loop()
        items = [item for item, _ in batch]
        futures = [future for _, future in batch]

        def done(results: list[str | None]) -> None:  # asyncio thread
            for future, result in zip(futures, results, strict=True):
                if not future.done():
                    future.set_result(result)
            self._in_flight = False
            if self._queue:
                self._send(port)

        def work() -> None:  # a greenlet of the hub
            try:
                results = _publish_all(port, items, self.timeout)
            except Exception as exc:
                results = [f"publish failed: {exc!r}"] * len(items)
            loop.call_soon_threadsafe(done, results)

        self.host.to_hub(gevent.spawn, work)


def _publish_all(port: MqttPort, items: list[Item], timeout: float) -> list[str | None]:
    many: Any = getattr(port, "publish_many", None)
    acks = many(items) if many is not None else [port.publish(*item) for item in items]
    results: list[str | None] = []
    for ack in acks:
        if ack.wait(timeout):
            results.append(None)
        else:
            results.append(ack.reason or f"not acknowledged within {timeout}s")
    return results
