"""A small expiring cache whose misses are fetched once: concurrent handshakes for the same certificate
(or the same CRL) wait for the one fetch in flight instead of each asking the responder."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from gevent.event import AsyncResult

__all__ = ["IdentityMemo", "SharedCache", "utcnow"]

K = TypeVar("K")
V = TypeVar("V")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SharedCache(Generic[V]):
    """``get(key, fetch)``: the cached value while it is fresh, else ``fetch()`` -> (value, fresh until).

    A failed fetch is not cached; its exception reaches every greenlet that waited for it. At most
    ``max_entries`` values are kept (expired ones go first, then the oldest)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._values: dict[Hashable, tuple[V, dt.datetime]] = {}
        self._inflight: dict[Hashable, AsyncResult] = {}
        self.fetches = 0  # how many times fetch() ran (tests and metrics)

    def get(self, key: Hashable, fetch: Callable[[], tuple[V, dt.datetime]]) -> V:
        entry = self._values.get(key)
        if entry is not None and utcnow() < entry[1]:
            return entry[0]
        pending = self._inflight.get(key)
        if pending is not None:
            value: V = pending.get()  # re-raises the fetch's exception
            return value
        pending = AsyncResult()
        self._inflight[key] = pending
        try:
            self.fetches += 1
            value, until = fetch()
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            del self._inflight[key]
        if until > utcnow():
            self._store(key, value, until)
        else:
            self._values.pop(key, None)
        pending.set(value)
        return value

    def peek(self, key: Hashable) -> V | None:
        """The fresh cached value for ``key``, or None (no fetch)."""
        entry = self._values.get(key)
        return entry[0] if entry is not None and utcnow() < entry[1] else None

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def _store(self, key: Hashable, value: V, until: dt.datetime) -> None:
        self._values.pop(key, None)
        if len(self._values) >= self.max_entries:
            now = utcnow()
            for stale in [k for k, (_v, exp) in self._values.items() if exp <= now]:
                del self._values[stale]
            while len(self._values) >= self.max_entries:
                del self._values[next(iter(self._values))]
        self._values[key] = (value, until)


class IdentityMemo(Generic[K, V]):
    """``get(obj, compute)``: ``compute(obj)`` once per object, kept while the memo holds the object (so
    ``id(obj)`` cannot be reused meanwhile). For facts about the certificates the revocation checks see on
    every handshake (the chain cache hands out the same objects), where hashing a certificate or comparing
    names would cost more than the lookup saves. At most ``max_entries`` (then it starts over)."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._values: dict[int, tuple[K, V]] = {}

    def get(self, obj: K, compute: Callable[[K], V]) -> V:
        entry = self._values.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        value = compute(obj)
        if len(self._values) >= self.max_entries:
            self._values.clear()
        self._values[id(obj)] = (obj, value)
        return value
