"""Rule actors and the Router: routes by kind, by predicate, claimed routes; handlers and rule actors are
separate roles, and a legacy HandlerActor with handle() still gets routed messages. No servers."""

from __future__ import annotations

import warnings
from typing import Any

import pykka
import pytest

from ferryman.actors.contracts import Message
from ferryman.actors.handler import HandlerActor
from ferryman.actors.router import Router
from ferryman.actors.rules import RuleActor


class Sink(RuleActor):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.got: list[Message] = []

    def handle(self, message: Message) -> None:
        self.got.append(message)

    def received(self) -> list[str]:
        return [m.topic for m in self.got]


@pytest.fixture
def actors() -> Any:
    started: list[pykka.ActorRef[Any]] = []

    def start(cls: Any) -> pykka.ActorRef[Any]:
        ref = cls.start()
        started.append(ref)
        return ref

    yield start
    for ref in reversed(started):
        if ref.is_alive():
            ref.stop()


def test_handler_actor_is_not_a_routing_target() -> None:
    assert not hasattr(HandlerActor, "handle")
    assert hasattr(RuleActor, "handle")
    assert not issubclass(RuleActor, HandlerActor)


def test_predicates_and_claims(actors: Any) -> None:
    router = actors(Router)
    catch_all, grid, watcher = actors(Sink), actors(Sink), actors(Sink)
    rp = router.proxy()
    rp.register("chat", catch_all).get()
    rp.register("chat", grid, match=lambda m: m.topic.lower().startswith("get"), claim=True).get()
    rp.register("msg", catch_all).get()
    rp.register("msg", watcher, match=lambda m: m.topic.startswith("grid/")).get()
    assert rp.route(Message("chat", "GET devices")).get() == 1  # claimed: the catch-all does not see it
    assert rp.route(Message("chat", "list")).get() == 1
    assert rp.route(Message("msg", "grid/a")).get() == 2  # not claimed: both
    assert rp.route(Message("msg", "other")).get() == 1
    assert catch_all.proxy().received().get() == ["list", "grid/a", "other"]
    assert grid.proxy().received().get() == ["GET devices"]
    assert watcher.proxy().received().get() == ["grid/a"]


def test_a_failing_predicate_does_not_match(actors: Any) -> None:
    router, sink = actors(Router), actors(Sink)
    rp = router.proxy()
    rp.register("k", sink, match=lambda m: 1 / 0 > 0, claim=True).get()
    assert rp.route(Message("k", "t")).get() == 0
    rp.register("k", sink).get()  # registering again replaces the route
    assert rp.route(Message("k", "t")).get() == 1
    rp.unregister("k", sink).get()
    assert rp.route(Message("k", "t")).get() == 0


def test_router_refuses_an_actor_without_handle(actors: Any) -> None:
    class Plain(HandlerActor):
        pass

    router, plain = actors(Router), actors(Plain)
    with pytest.raises(TypeError):
        router.proxy().register("k", plain).get()


def test_legacy_handler_with_handle_still_gets_messages(actors: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class Legacy(HandlerActor):
            def __init__(self, **kw: Any) -> None:
                super().__init__(**kw)
                self.got: list[str] = []

            def handle(self, message: Message) -> None:
                self.got.append(message.topic)

            def received(self) -> list[str]:
                return self.got

    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    router, legacy = actors(Router), actors(Legacy)
    router.proxy().register("k", legacy).get()
    assert router.proxy().route(Message("k", "t")).get() == 1
    assert legacy.proxy().received().get() == ["t"]
