"""GreenletActor: Pykka's semantics with a greenlet only while there are messages."""

from __future__ import annotations

import gc
from typing import Any

import gevent
import pykka
import pytest
from greenlet import greenlet

from ferryman.actors.greenlet_actor import GreenletActor
from ferryman.actors.session import Call, SessionActor


class Recorder(GreenletActor):
    def __init__(self, log: list[Any]) -> None:
        super().__init__()
        self.log = log

    def on_start(self) -> None:
        self.log.append("start")

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if message == "slow":
            gevent.sleep(0.01)
        self.log.append(message)
        return ("echo", message)

    def on_stop(self) -> None:
        self.log.append("stop")


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet) and not o.dead)


def test_messages_in_order_with_asks_and_tells_interleaved() -> None:
    log: list[Any] = []
    ref = Recorder.start(log)
    for i in range(50):
        ref.tell(i)
    assert ref.ask("slow", timeout=5) == ("echo", "slow")
    for i in range(50, 100):
        ref.tell(i)
    assert ref.ask("last", timeout=5) == ("echo", "last")
    ref.stop()
    assert log == ["start", *range(50), "slow", *range(50, 100), "last", "stop"]


def test_ask_raises_what_the_actor_raised_and_the_actor_lives_on() -> None:
    ref = Recorder.start([])
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=5)
    assert ref.ask("after", timeout=5) == ("echo", "after")
    ref.stop()


def test_a_failing_tell_stops_the_actor_and_later_asks_are_refused() -> None:
    ref = Recorder.start([])
    ref.tell("boom")
    gevent.sleep(0.05)
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("x", timeout=1)


def test_idle_actors_hold_no_greenlet() -> None:
    gc.collect()
    before = live_greenlets()
    refs = [Recorder.start([]) for _ in range(200)]
    gevent.sleep(0.05)  # each ran on_start, then went idle
    gc.collect()
    idle = live_greenlets()
    assert idle - before < 10, f"{idle - before} greenlets for 200 idle actors"
    assert all(r.ask("ping", timeout=5) == ("echo", "ping") for r in refs)
    for r in refs:
        r.stop()
    assert not any(r.is_alive() for r in refs)


def test_proxies_work_too() -> None:
    class Counter(GreenletActor):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def add(self, k: int) -> int:
            self.n += k
            return self.n

    ref = Counter.start()
    proxy = ref.proxy()
    proxy.add(2).get(timeout=5)
    assert proxy.add(3).get(timeout=5) == 5
    ref.stop()


def test_on_start_runs_before_start_returns_and_urns_are_unique() -> None:
    log: list[Any] = []
    a = Recorder.start(log)
    assert log == ["start"]  # in the caller's greenlet: no greenlet was needed to start it
    b = Recorder.start(log)
    assert a.actor_urn != b.actor_urn
    a.stop()
    b.stop()


class Session(SessionActor):
    """A session actor that records how often it is closed and stopped."""

    CALLS = SessionActor.CALLS | {"wait_then_close"}

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def on_close(self, reason: str) -> None:
        self.log.append(f"close:{reason}")

    def on_stop(self) -> None:
        self.log.append("stop")
        super().on_stop()

    def wait_then_close(self) -> None:
        gevent.sleep(0.01)
        self.close("asked")


def session_of(ref: pykka.ActorRef[Any]) -> Session:
    actor = ref._actor_weakref()  # the test looks inside; owners hold the object itself
    assert isinstance(actor, Session)
    return actor


def test_an_idle_session_actor_ended_by_its_connection_stops_in_place_once() -> None:
    live = SessionActor.live
    log: list[str] = []
    ref = Session.start(log)
    assert SessionActor.live == live + 1
    actor = session_of(ref)
    actor.connection_ended("device left")
    # Stopped before connection_ended returned, in this greenlet, without a message.
    assert not ref.is_alive()
    assert log == ["close:device left", "stop"]
    assert SessionActor.live == live
    actor.connection_ended("again")  # idempotent
    ref.stop(block=False)
    gevent.sleep(0.01)
    assert log == ["close:device left", "stop"]
    assert SessionActor.live == live
    del actor
    gc.disable()
    try:  # no cycle holds a stopped actor: its reference count alone frees it
        assert ref._actor_weakref() is None
    finally:
        gc.enable()


def test_a_session_actor_closing_in_its_own_message_stops_once() -> None:
    live = SessionActor.live
    log: list[str] = []
    ref = Session.start(log)
    ref.ask(Call("wait_then_close"), timeout=5)
    assert not ref.is_alive()
    assert log == ["close:asked", "stop"]
    assert SessionActor.live == live
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(Call("close", ("late",)), timeout=1)


def test_a_busy_session_actor_handles_queued_messages_before_it_stops() -> None:
    log: list[str] = []
    ref = Session.start(log)
    reply = ref.ask(Call("wait_then_close"), block=False)  # busy in its own greenlet for 10 ms
    gevent.sleep(0)
    session_of(ref).connection_ended("connection closed")  # from another greenlet meanwhile
    assert log == ["close:connection closed"]  # closed at once; the stop waits for the message in hand
    reply.get(timeout=5)
    gevent.sleep(0.01)
    assert not ref.is_alive()
    assert log == ["close:connection closed", "stop"]
