"""Base classes of the per-connection actors: a device actor (the device side) paired with an upstream
actor (the server side).

The actors own lifecycle and control: they are started per connection, receive control-plane messages
(a new grant, a disconnect order) and stop when the connection ends. The bytes themselves move in the
session's own greenlets (the data plane), not through the actors' inboxes.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent
import pykka
from loguru import logger
from pykka.messages import _ActorStop

from .contracts import Grant, Refusal, SessionControl
from .greenlet_actor import GreenletActor

__all__ = ["ActorSessionControl", "Call", "DeviceActorBase", "SessionActor", "UpstreamActorBase"]


@dataclass(frozen=True, slots=True)
class Call:
    """A message to a session actor naming one of its ``CALLS`` methods.

    Per-connection code talks to session actors with plain ``tell``/``ask`` of these instead of Pykka
    proxies: building a proxy introspects every attribute of the actor, which cost a quarter of the
    gateway's CPU per connect (bench/mqtt_scale.py)."""

    method: str
    args: tuple[Any, ...] = ()


class SessionActor(GreenletActor):
    """Common lifecycle: ``close(reason)`` is idempotent and runs ``on_close`` exactly once.

    Per-connection actors stay out of Pykka's ``ActorRegistry``: it is a list, so with N connections open
    each stop scanned N entries (stopping 50,000 actors took 30 s here) and connection churn grew with the
    square of the connection count. Nothing looks sessions up by URN or class; their owners hold the refs.
    ``SessionActor.live`` counts them for the metrics instead.

    They are ``GreenletActor``s, not ``ThreadingActor``s: a greenlet only while a message is being handled,
    instead of a parked thread each. That also keeps them clear of the stdlib's bookkeeping of non-daemon
    threads, which is scanned on every thread start and stop and made each connect O(open connections)
    (73 % of the gateway's CPU at 10,000 connections).

    Each is stopped exactly once, without a message when it can be: ``close`` (from a message it handles)
    or ``connection_ended`` (from whichever greenlet ended the connection) stops it in place when it is
    idle or handling that very message, and sends Pykka's stop message only when other messages are
    queued before it (they are handled first, as ``ActorRef.stop`` promises).
    """

    live: ClassVar[int] = 0
    #: The methods ``Call`` messages may name.
    CALLS: ClassVar[frozenset[str]] = frozenset({"close"})

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.close_reason = ""

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Any]:
        # pykka.Actor.start without ActorRegistry.register. Pykka's _stop still calls unregister, which
        # then scans only the few long-lived actors (router, handlers, listeners).
        obj = cls(*args, **kwargs)
        SessionActor.live += 1
        obj._start_actor_loop()
        return obj.actor_ref

    def _stop(self) -> None:
        # pykka.Actor._stop without ActorRegistry.unregister (never registered) and its debug line (an
        # f-string built per stop even with debug logging off).
        if self.actor_stopped.is_set():
            return
        SessionActor.live -= 1
        self.actor_stopped.set()
        try:
            self.on_stop()
        except Exception:
            self._handle_failure(*sys.exc_info())
        finally:
            self.release_inbox()

    def _handle_failure(self, *exc_info: Any) -> None:
        if not self.actor_stopped.is_set():
            SessionActor.live -= 1
        super()._handle_failure(*exc_info)
        self.release_inbox()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Call) and message.method in self.CALLS:
            return getattr(self, message.method)(*message.args)
        logger.warning("{} got an unknown message {!r}", type(self).__name__, message)
        return None

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        try:
            self.on_close(reason)
        except Exception as exc:
            logger.opt(exception=exc).error("{} failed while closing", type(self).__name__)
        finally:
            self._stop_soon()

    def connection_ended(self, reason: str) -> None:
        """The connection this actor belongs to ended (called in whichever greenlet ended it): close and
        stop."""
        self.close(reason)

    def _stop_soon(self) -> None:
        if self.actor_stopped.is_set():
            return
        runner = self._runner
        if runner is gevent.getcurrent() or (runner is None and self.actor_inbox.empty()):
            self._stop()  # in its own message, Pykka's loop ends after it; idle, nothing is waiting
        else:
            self.actor_ref.tell(_ActorStop())  # after the messages queued before it

    def on_close(self, reason: str) -> None:
        """Release the connection's resources. Called once, from ``close``."""

    def on_stop(self) -> None:
        self.close(self.close_reason or "stopped")

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        logger.opt(exception=(exception_type, exception_value, traceback)).error(
            "{} crashed", type(self).__name__
        )
        self.close("internal error")


class DeviceActorBase(SessionActor):
    """The device side of one connection. Subclasses apply grants and disconnect orders to their protocol."""

    CALLS = SessionActor.CALLS | {"update_grant", "disconnect"}

    def update_grant(self, grant: Grant) -> None:
        raise NotImplementedError

    def disconnect(self, refusal: Refusal) -> None:
        raise NotImplementedError


class UpstreamActorBase(SessionActor):
    """The server side of one connection: dials the target and owns that socket."""


class ActorSessionControl(SessionControl):
    """``SessionControl`` over a device session actor's ref: every call is a ``tell`` and never blocks."""

    __slots__ = ("_ref",)

    def __init__(self, ref: pykka.ActorRef[Any]) -> None:
        self._ref = ref

    def update_grant(self, grant: Grant) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self._ref.tell(Call("update_grant", (grant,)))

    def disconnect(self, refusal: Refusal) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self._ref.tell(Call("disconnect", (refusal,)))
