"""The handler API in process: ferryman used as a library, with a recording handler in the chain."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any, ClassVar

import pykka
import pytest

from ferryman import (
    Gateway,
    Grant,
    HandlerActor,
    HandlerChain,
    Message,
    Refusal,
    RefusalCode,
    Router,
    Session,
)
from ferryman.actors.contracts import CombinedGrant
from ferryman.actors.rules import RuleActor
from ferryman.protocols.mqtt.packets import Disconnect
from ferryman.wiring import HANDLERS, LISTENERS, load_settings
from tests.rawclient import RawClient
from tests.servers import Mosquitto, free_port


class Recorder(HandlerActor):
    events: ClassVar[list[tuple[str, int, Any]]] = []

    def auth_connect(self, session: Session) -> Grant | Refusal | None:
        if session.client_id == "explode":
            raise RuntimeError("handler bug")
        return None  # no opinion: the static handler decides

    def on_connect(self, session: Session, grant: Grant) -> None:
        self.events.append(("connect", session.id, session.client_id))

    def on_publish(self, session: Session, topic: str, payload: bytes) -> None:
        self.events.append(("publish", session.id, (topic, payload)))

    def on_subscribe(self, session: Session, topic_filters: list[str]) -> None:
        self.events.append(("subscribe", session.id, topic_filters))

    def on_unsubscribe(self, session: Session, topic_filters: list[str]) -> None:
        self.events.append(("unsubscribe", session.id, topic_filters))

    def on_disconnect(self, session: Session, reason: str) -> None:
        self.events.append(("disconnect", session.id, reason))


@pytest.fixture
def library_gateway(broker: Mosquitto, tmp_path: Path) -> Any:
    port = free_port()
    cfg = tmp_path / "lib.toml"
    cfg.write_text(
        f"""
[metrics]
address = ""
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{broker.port}"
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
[[handler]]
name = "recorder"
"""
    )
    Recorder.events.clear()
    gw = Gateway(load_settings(cfg), LISTENERS, {**HANDLERS, "recorder": Recorder})
    gw.start()
    gw.port = port  # type: ignore[attr-defined]
    yield gw
    gw.stop()


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_on_disconnect_fires_exactly_once_per_connected_session(library_gateway: Gateway) -> None:
    port = library_gateway.port  # type: ignore[attr-defined]
    clean = RawClient(port, 5)
    assert clean.connect("clean", "dev1", "pw1").reason_code == 0
    clean.subscribe("dev1/a")
    clean.publish("dev1/a/x", b"p", qos=1)
    clean.unsubscribe("dev1/a")
    clean.disconnect()  # DISCONNECT packet
    abrupt = RawClient(port, 4)
    assert abrupt.connect("abrupt", "dev1", "pw1").reason_code == 0
    abrupt.close()  # socket closed without DISCONNECT
    bad = RawClient(port, 5)
    assert bad.connect("malformed", "dev1", "pw1").reason_code == 0
    bad.send_raw(b"\x36\x04\x00\x01ab")  # PUBLISH with QoS 3: malformed
    assert bad.closed_within(3)
    refused = RawClient(port, 5)
    assert refused.connect("refused", "dev1", "nope").reason_code == 0x87
    live = RawClient(port, 5)
    assert live.connect("live", "dev1", "pw1").reason_code == 0

    wait_for(lambda: sum(1 for e in Recorder.events if e[0] == "disconnect") >= 3)
    library_gateway.stop()  # closes "live" during shutdown, telling it why
    assert live.closed_within(5)
    assert [p.reason_code for p in live.inbox if isinstance(p, Disconnect)] == [0x8B]
    events = list(Recorder.events)
    connects = {sid: cid for kind, sid, cid in events if kind == "connect"}
    disconnects = collections.Counter(sid for kind, sid, _ in events if kind == "disconnect")
    assert sorted(connects.values()) == ["abrupt", "clean", "live", "malformed"]
    assert disconnects == {sid: 1 for sid in connects}  # exactly once each, none for the refused one
    clean_id = next(s for s, c in connects.items() if c == "clean")
    mine = [(k, v) for k, s, v in events if s == clean_id]
    assert mine == [
        ("connect", "clean"),
        ("subscribe", ["dev1/a"]),
        ("publish", ("dev1/a/x", b"p")),
        ("unsubscribe", ["dev1/a"]),
        ("disconnect", mine[-1][1]),
    ]


def test_listener_address_is_the_bound_one(library_gateway: Gateway) -> None:
    assert library_gateway.listener_address("mqtt") == ("127.0.0.1", library_gateway.port)  # type: ignore[attr-defined]


def test_a_failing_handler_refuses_that_connection_only(library_gateway: Gateway) -> None:
    port = library_gateway.port  # type: ignore[attr-defined]
    assert RawClient(port, 5).connect("explode", "dev1", "pw1").reason_code == 0x88
    assert RawClient(port, 4).connect("explode", "dev1", "pw1").reason_code == 3
    ok = RawClient(port, 5)
    assert ok.connect("fine", "dev1", "pw1").reason_code == 0
    ok.disconnect()


class Abstainer(HandlerActor):
    pass


def test_chain_fails_closed_when_every_handler_abstains() -> None:
    ref = Abstainer.start()
    try:
        chain = HandlerChain([ref])
        session = Session(1, "l", "mqtt", ("127.0.0.1", 1))
        decision = chain.connect(session)
        assert isinstance(decision, Refusal) and decision.code is RefusalCode.NOT_AUTHORIZED
        assert not chain.wants_publish  # a handler without on_publish costs nothing per packet
    finally:
        ref.stop()


def test_combined_grant_is_the_intersection() -> None:
    a = Grant(["a/#", "b/#"], ["a/#"])
    b = Grant(["b/#"], ["#"])
    both = CombinedGrant([a, b])
    assert both.auth_publish("b/1", b"") and not both.auth_publish("a/1", b"")
    assert both.auth_subscribe("a/x") and not both.auth_subscribe("b/x")
    assert not both.publish_all and not both.deliver_all
    assert CombinedGrant([Grant.everything(), Grant.everything()]).publish_all


class Sink(RuleActor):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.got: list[Message] = []

    def handle(self, message: Message) -> None:
        self.got.append(message)

    def received(self) -> list[Message]:
        return self.got


def test_router_delivers_by_kind_in_order() -> None:
    router = Router.start()
    a, b = Sink.start(), Sink.start()
    try:
        rp = router.proxy()
        rp.register("mqtt.publish", a).get()
        rp.register("mqtt.publish", b).get()
        rp.register("xmpp.chat", b).get()
        for i in range(20):
            assert rp.route(Message("mqtt.publish", f"t/{i}", b"x")).get() == 2
        assert rp.route(Message("xmpp.chat", "alice", b"hi")).get() == 1
        assert rp.route(Message("nobody", "t", b"")).get() == 0
        got_a = a.proxy().received().get()
        got_b = b.proxy().received().get()
        assert [m.topic for m in got_a] == [f"t/{i}" for i in range(20)]
        assert [m.kind for m in got_b].count("xmpp.chat") == 1
        b.stop()
        assert rp.route(Message("mqtt.publish", "t/x")).get() == 1  # dead handlers are dropped
    finally:
        for ref in (router, a, b):
            if ref.is_alive():
                ref.stop()
        assert not pykka.ActorRegistry.get_by_class(Sink)


class DropSubscribes:
    """An interceptor that swallows every SUBSCRIBE and UNSUBSCRIBE going up."""

    def intercept(self, session: Session, packet: Any, direction: Any) -> Any | None:
        from ferryman.protocols.mqtt.packets import Subscribe, Unsubscribe

        return None if isinstance(packet, Subscribe | Unsubscribe) else packet


class Dropper(HandlerActor):
    def auth_connect(self, session: Session) -> Grant:
        return Grant(["#"], ["#"], interceptors=[DropSubscribes()])


@pytest.mark.parametrize(("version", "code"), [(4, 0x80), (5, 0x87)])
def test_a_dropped_subscribe_is_still_answered(
    broker: Mosquitto, tmp_path: Path, version: int, code: int
) -> None:
    port = free_port()
    cfg = tmp_path / "drop.toml"
    cfg.write_text(
        f"""
[metrics]
address = ""
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{broker.port}"
[auth]
handler = "dropper"
"""
    )
    gw = Gateway(load_settings(cfg), LISTENERS, {"dropper": Dropper})
    gw.start()
    try:
        c = RawClient(port, version)
        assert c.connect("d").reason_code == 0
        assert c.subscribe("a/#", "b").reason_codes == [code, code]  # no hang: the proxy answers
        assert c.unsubscribe("a/#").reason_codes == ([0x87] if version == 5 else [])
        c.disconnect()
    finally:
        gw.stop()


def test_session_actors_stay_out_of_the_registry_and_are_counted(library_gateway: Gateway) -> None:
    from ferryman.actors.session import SessionActor

    port = library_gateway.port  # type: ignore[attr-defined]
    registered = len(pykka.ActorRegistry.get_all())
    before = SessionActor.live
    clients = [RawClient(port, 4) for _ in range(20)]
    for i, c in enumerate(clients):
        assert c.connect(f"reg{i}", "dev1", "pw1").reason_code == 0
    assert SessionActor.live == before + 40  # a client and an upstream session actor per connection
    assert len(pykka.ActorRegistry.get_all()) == registered
    for c in clients:
        c.disconnect()
    wait_for(lambda: SessionActor.live == before)
