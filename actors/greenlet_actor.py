"""A Pykka actor whose greenlet exists only while it has messages to handle.

``pykka.ThreadingActor`` gives every actor a thread (under gevent, a greenlet plus a ``threading.Thread``
object and a ``queue.Queue``) that sits parked in ``inbox.get()`` for the actor's whole life. A proxied
connection has two actors that receive a message now and then; parked, they were about 20 KiB of its
57 KiB (bench/mqtt_scale.py: 589 MiB for 10,000 connections against a 400 MiB target).

``GreenletActor`` keeps Pykka's semantics (tell, ask, futures, stop, on_start / on_stop / on_failure, one
message at a time, in order) and its receive loop: a greenlet is spawned when a message arrives at an idle
actor, runs Pykka's ``_actor_loop_running`` until the inbox is empty, and ends. Messages must be sent from
the gevent hub's thread (every greenlet is); other OS threads cross over with
``hub.loop.run_callback_threadsafe`` first, as the asyncio host does.

Creating, starting and stopping one is cheap, because a proxied connection makes and ends two of them on
its connect path (issue 13: a reconnect storm is a connect-rate problem):

- ``__init__`` does what ``pykka.Actor.__init__`` does without ``uuid.uuid4()`` (a ``getrandom`` syscall)
  and without a ``threading.Event`` (a Condition and two locks): the URN comes from a counter (unique in
  the process, which is the only place it is used) and the stop flag is a plain boolean flag.
- ``start`` runs ``on_start`` in the caller's greenlet, before it returns, when no message is waiting
  (always, at start): no greenlet is spawned for it.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import gevent
import pykka
from pykka import ThreadingFuture

__all__ = ["GreenletActor"]


class _Idle(BaseException):
    """Raised by an empty inbox to end Pykka's receive loop; never escapes this module."""


class _LazyInbox:
    """The actor's inbox: a deque that wakes its actor when a message lands in it while idle. The deque
    is made at the first message (an empty one is about 600 bytes, and most session actors never get a
    message)."""

    __slots__ = ("actor", "messages")

    def __init__(self) -> None:
        self.messages: deque[Any] | None = None
        self.actor: GreenletActor | None = None

    def put(self, envelope: Any) -> None:
        if self.messages is None:
            self.messages = deque()
        self.messages.append(envelope)
        actor = self.actor
        if actor is not None and actor._runner is None:
            actor._runner = gevent.spawn(actor._run)

    def get(self) -> Any:
        if self.messages:
            return self.messages.popleft()
        raise _Idle

    def empty(self) -> bool:
        return not self.messages


class _StopFlag:
    """The part of ``threading.Event`` Pykka uses for ``actor_stopped`` (``is_set`` and ``set``). Nothing
    waits on it: ``ActorRef.stop(block=True)`` waits on a future."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True


_urns = itertools.count(1)


class GreenletActor(pykka.Actor):
    def __init__(self) -> None:
        # pykka.Actor.__init__'s fields, made cheaply (module docstring); no super().__init__() on purpose.
        self.actor_urn = f"urn:ferryman:actor:{next(_urns)}"
        inbox = _LazyInbox()
        inbox.actor = self
        self.actor_inbox = inbox
        self.actor_stopped = _StopFlag()  # type: ignore[assignment]  # duck-typed: is_set / set
        self._actor_ref = pykka.ActorRef(self)
        self._runner: gevent.Greenlet | None = None
        self._set_up = False

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _LazyInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return ThreadingFuture()  # its queue is gevent's once patched: waiting blocks a greenlet only

    def release_inbox(self) -> None:
        """Once stopped: the inbox no longer needs to wake this actor (a stopped actor's ref refuses every
        message), so the inbox <-> actor cycle is broken and a stopped actor is freed by its reference
        count instead of waiting for the cyclic garbage collector."""
        inbox = self.actor_inbox
        if isinstance(inbox, _LazyInbox):
            inbox.actor = None

    def _start_actor_loop(self) -> None:
        if self.actor_inbox.empty():
            self._set_up = True
            self._actor_loop_setup()  # on_start, in the caller's greenlet (module docstring)
        else:
            self._runner = gevent.spawn(self._run)  # on_start, then whatever arrived meanwhile

    def _run(self) -> None:
        try:
            if not self._set_up:
                self._set_up = True
                self._actor_loop_setup()
            try:
                self._actor_loop_running()  # Pykka's own loop: handles messages until stopped ...
            except _Idle:
                return  # ... or until the inbox is empty; the next message spawns a new runner
            self._actor_loop_teardown()
        finally:
            self._runner = None
