"""Pumps that give their greenlet back while their connection is idle (memory per idle connection).

A pump (one direction of a proxied connection, connection.py) is a loop in a greenlet that blocks in
``recv``. A greenlet waiting there holds its saved C stack and its Python data stack: about 9 KiB, the
largest part of an idle connection (measured: a bare gevent relay holds 19 KiB per connection with its two
greenlets parked in ``recv``, 1.4 KiB with io watchers instead). A fleet's connections are idle nearly all
the time, so a pump that has waited ``park_idle_after`` seconds for data parks:

1. the listener's sweep (``sweep``) finds it waiting (``PumpPark.waiting_since``, set around ``recv``
   only) and has the hub throw ``Parked`` into it (``throw_if_waiting``: checked again in the hub, so the
   exception can only land in that ``recv``, where no byte has been taken from the socket);
2. the pump arms an io watcher on its socket (and a timer for its keepalive deadline, if it has one) and
   its greenlet ends;
3. when bytes arrive, the watcher's callback (in the hub) spawns a new greenlet that resumes the pump; the
   pump's state (framer with any partial packet, counters, aliases) lives on the connection, not in the
   greenlet. A connection closed while parked stops its watchers first (a closed descriptor's number is
   reused at once).

An active pump never parks (its ``recv`` returns before the sweep sees it waiting long enough), so the
data plane's per-message cost is unchanged: one ``time.monotonic()`` per ``recv``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent

__all__ = ["Parked", "PumpPark", "sweep", "throw_if_waiting"]

SWEEP_BATCH = 1000  # connections looked at between two yields of the sweep


class Parked(Exception):
    """Thrown into a pump that waited too long for data: it parks (module docstring)."""


class PumpPark:
    """The parking state of one pump: the greenlet running it, since when it waits in ``recv`` (0: it
    does not), and while parked, its watchers."""

    __slots__ = ("_io", "_timer", "greenlet", "waiting_since")

    def __init__(self) -> None:
        self.greenlet: Any = None
        self.waiting_since = 0.0
        self._io: Any = None
        self._timer: Any = None

    @property
    def parked(self) -> bool:
        return self._io is not None

    def park(
        self,
        fd: int,
        resume: Callable[[], object],
        expire: Callable[[], object] | None = None,
        within: float = 0.0,
    ) -> None:
        """Wait for ``fd`` to be readable without a greenlet, then run ``resume`` in a new one. With
        ``expire``: if nothing arrives within ``within`` seconds, run that instead (a keepalive)."""
        self.waiting_since = 0.0
        self.greenlet = None
        loop = gevent.get_hub().loop
        io = loop.io(fd, 1)
        io.start(self._wake, resume)
        self._io = io
        if expire is not None:
            timer = loop.timer(max(within, 0.0))
            timer.start(self._wake, expire)
            self._timer = timer

    def _wake(self, then: Callable[[], object]) -> None:  # a watcher's callback, in the hub
        self.unpark()
        gevent.spawn(then)

    def unpark(self) -> None:
        """Stop the watchers (idempotent)."""
        io, timer = self._io, self._timer
        self._io = self._timer = None
        if io is not None:
            io.stop()
            io.close()
        if timer is not None:
            timer.stop()
            timer.close()


def throw_if_waiting(park: PumpPark) -> None:
    """Run in the hub (``loop.run_callback``): throw ``Parked`` into the pump if it still waits in
    ``recv``. It set ``waiting_since`` right before ``recv`` and clears it right after, with no switch in
    between, so a pump seen waiting here is suspended inside that ``recv``."""
    glet = park.greenlet
    if park.waiting_since and glet is not None and not glet.dead:
        glet.throw(Parked)


def sweep(connections: Callable[[], Iterable[Any]], park_after: float) -> None:
    """Forever: every half ``park_after`` seconds, park the pumps of ``connections()`` (objects with
    ``up_park`` and ``down_park``) that have waited at least ``park_after`` seconds for data. After a
    sweep that parked many, the C allocator is asked to return the freed stacks' pages (``trim``)."""
    every = max(park_after / 2, 0.1)
    run = gevent.get_hub().loop.run_callback
    while True:
        gevent.sleep(every)
        due = time.monotonic() - park_after
        parked = 0
        for i, conn in enumerate(list(connections())):
            for park in (conn.up_park, conn.down_park):
                since = park.waiting_since
                if since and since <= due:
                    run(throw_if_waiting, park)
                    parked += 1
            if i % SWEEP_BATCH == SWEEP_BATCH - 1:
                gevent.sleep(0)
        if parked >= TRIM_AFTER:
            gevent.sleep(0)  # the parking callbacks run first
            trim()


TRIM_AFTER = 1000  # pumps parked by one sweep after which freed memory is handed back to the system


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        return None


_MALLOC_TRIM = _malloc_trim()


def trim() -> None:
    """Hand the pages of freed memory back to the system (glibc ``malloc_trim``; a no-op elsewhere). A
    parked greenlet's saved stack was a few KiB of malloc'd memory each; without this the heap keeps the
    peak of a reconnect storm (every connection holding its greenlets) as RSS long after."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
