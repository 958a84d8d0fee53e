"""HandlerChain: handlers that declare inline calls are called in the session's greenlet; the rest are
asked and told through their inboxes; an inline notification that raises costs nothing but its own call."""

from __future__ import annotations

from typing import Any

import gevent
import pytest

from ferryman.actors.contracts import Grant, Refusal, Session
from ferryman.actors.handler import HandlerActor, HandlerChain


def session(sid: int = 1) -> Session:
    return Session(sid, "l", "mqtt", ("127.0.0.1", 1), 4, f"c{sid}", "u", b"p")


class Recording(HandlerActor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[str, Any]] = []
        self.greenlets: list[Any] = []

    def auth_connect(self, session: Session) -> Grant | Refusal | None:
        self.greenlets.append(gevent.getcurrent())
        return Grant.everything()

    def on_connect(self, session: Session, grant: Grant) -> None:
        self.seen.append(("connect", session.id))
        self.greenlets.append(gevent.getcurrent())

    def on_disconnect(self, session: Session, reason: str) -> None:
        if reason == "boom":
            raise RuntimeError("a handler bug")
        self.seen.append(("disconnect", session.id))


class Inline(Recording):
    inline_connect = True
    inline_notifications = frozenset({"on_connect", "on_disconnect"})


@pytest.mark.parametrize("cls", [Inline, Recording], ids=["inline", "asked"])
def test_decisions_and_notifications(cls: type[Recording]) -> None:
    ref = cls.start()
    try:
        actor = ref._actor_weakref()
        assert isinstance(actor, Recording)
        chain = HandlerChain([ref])
        me = gevent.getcurrent()
        assert isinstance(chain.connect(session()), Grant)
        chain.on_connect(session(), Grant.everything())
        if cls is Inline:  # done before the call returned, in this very greenlet
            assert actor.seen == [("connect", 1)]
            assert actor.greenlets == [me, me]
        if cls is Inline:
            chain.on_disconnect(session(), "boom")  # a failing inline notification is logged, not raised
        chain.on_disconnect(session(), "bye")
        if cls is not Inline:
            ref.ask("sync", timeout=5)  # told ones: handled by the time this is answered
        assert actor.seen == [("connect", 1), ("disconnect", 1)]
        if cls is not Inline:
            assert me not in actor.greenlets  # asked and told: the actor's own thread
    finally:
        ref.stop()
