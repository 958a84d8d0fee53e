"""XMPP users as sessions of the handler chain, in process (no servers): the ``[bridge.xmpp]`` JID rules as a
chain handler that decides "xmpp" sessions only, the built-in handlers abstaining for them, one cached
decision per bare JID, and live updates through the users' ``SessionControl``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pykka
import pytest

from ferryman.actors.contracts import Grant, Refusal, RefusalCode, Session
from ferryman.actors.handler import HandlerActor, HandlerChain
from ferryman.bridge.authz import BridgeAuthz, XmppJidHandler
from ferryman.bridge.builtin import AllowAllHandler
from ferryman.bridge.static import StaticHandler
from ferryman.config.schema import BridgeXmppSettings, JidRuleSettings
from ferryman.protocols.xmpp.users import XmppUser, XmppUsers
from ferryman.wiring import load_settings


def xmpp_settings(allowed: tuple[str, ...], rules: tuple[JidRuleSettings, ...] = (), **kw: Any) -> Any:
    return SimpleNamespace(
        bridge=SimpleNamespace(xmpp=BridgeXmppSettings(allowed_jids=allowed, rules=rules, **kw))
    )


def xmpp_session(jid: str, control: Any = None) -> Session:
    return Session(7, "xmpp", "xmpp", ("", 0), 0, jid, jid, None, None, jid, control=control)


@pytest.fixture
def started() -> Iterator[list[pykka.ActorRef[Any]]]:
    refs: list[pykka.ActorRef[Any]] = []
    yield refs
    for ref in refs:
        ref.stop()


def test_jid_rules_decide_xmpp_sessions_only(started: list[pykka.ActorRef[Any]]) -> None:
    ref = XmppJidHandler.start(
        settings=xmpp_settings(
            ("alice@localhost", "bob@localhost"),
            (JidRuleSettings("bob@localhost", ("$SYS/x",), ("b/#",)),),
            default_publish=("#", "$SYS/x"),
        )
    )
    started.append(ref)
    h = ref.proxy()
    mqtt = Session(1, "mqtt", "mqtt", ("127.0.0.1", 1), 4, "c", "alice@localhost", b"pw")
    assert h.auth_connect(mqtt).get() is None
    refused = h.auth_connect(xmpp_session("mallory@localhost")).get()
    assert isinstance(refused, Refusal) and "mallory@localhost is not allowed" in refused.reason
    alice = h.auth_connect(xmpp_session("alice@localhost")).get()
    assert alice.auth_publish("a/b", b"") and alice.auth_subscribe("#")
    assert not alice.auth_publish("$SYS/x", b"")  # the defaults never grant $ topics, whatever they say
    bob = h.auth_connect(xmpp_session("bob@localhost")).get()
    assert bob.auth_publish("$SYS/x", b"")  # an explicit rule does
    assert not bob.auth_subscribe("a/#") and bob.auth_deliver("b/1")


def test_builtin_handlers_abstain_for_xmpp(tmp_path: Path, started: list[pykka.ActorRef[Any]]) -> None:
    path = tmp_path / "f.toml"
    path.write_text(
        '[auth]\nhandler = "static"\n[[auth.users]]\nusername = "alice@localhost"\npassword = "x"\n'
    )
    settings = load_settings(path, env={})
    for cls in (AllowAllHandler, StaticHandler):
        ref = cls.start(settings=settings)
        started.append(ref)
        assert ref.proxy().auth_connect(xmpp_session("alice@localhost")).get() is None
    # ...so a chain of only them refuses an XMPP user (fail closed): the JID rules must be in front
    assert isinstance(HandlerChain(started).connect(xmpp_session("alice@localhost")), Refusal)


class Tells:
    def __init__(self) -> None:
        self.told: list[tuple[str, str, int, Any]] = []

    def __call__(self, op: str, jid: str, sid: int, arg: Any) -> None:
        self.told.append((op, jid, sid, arg))


class Counting(HandlerActor):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.asked = 0
        self.events: list[str] = []

    def auth_connect(self, session: Session) -> Grant | Refusal | None:
        self.asked += 1
        return Grant(["x/#"], ["#"]) if session.identity == "alice@localhost" else None

    def on_connect(self, session: Session, grant: Grant) -> None:
        self.events.append(f"connect {session.identity}")

    def on_disconnect(self, session: Session, reason: str) -> None:
        self.events.append(f"disconnect {session.identity} {reason}")

    def state(self) -> tuple[int, list[str]]:
        return self.asked, list(self.events)


def test_users_are_decided_once_and_controlled_live(started: list[pykka.ActorRef[Any]]) -> None:
    jids = XmppJidHandler.start(authz=BridgeAuthz(["alice@localhost", "bob@localhost"]))
    counting = Counting.start()
    started += [jids, counting]
    tells = Tells()
    users = XmppUsers(HandlerChain([jids, counting]), tells, refusal_ttl=60)
    alice = users.decide("alice@localhost")
    assert isinstance(alice, XmppUser)
    assert alice.session.protocol == "xmpp" and alice.session.identity == "alice@localhost"
    assert alice.grant.auth_publish("x/1", b"") and not alice.grant.auth_publish("y", b"")  # intersected
    assert users.decide("alice@localhost") is alice  # cached
    bob = users.decide("bob@localhost")  # the other handler abstains: the JID rules alone decide
    assert isinstance(bob, XmppUser) and bob.grant.auth_publish("y", b"")
    assert isinstance(users.decide("mallory@localhost"), Refusal)
    assert isinstance(users.decide("mallory@localhost"), Refusal)
    assert counting.proxy().state().get()[0] == 2  # alice and bob; mallory stopped at the JID rules
    # a handler's control reaches the owner as a tell; the owner applies it
    assert alice.session.control is not None
    alice.session.control.update_grant(Grant.nothing())
    op, jid, sid, grant = tells.told[-1]
    assert (op, jid, sid) == ("update_grant", "alice@localhost", alice.session.id)
    assert users.apply(op, jid, sid, grant) is None and alice.grant is grant
    assert users.apply("update_grant", jid, sid + 1000, Grant.everything()) is None  # stale: ignored
    assert alice.grant is grant
    alice.session.control.disconnect(Refusal(RefusalCode.BANNED, "gone"))
    ended = users.apply(*tells.told[-1])
    assert isinstance(ended, Refusal) and ended.reason == "gone"
    assert users.known("alice@localhost") is None  # the next command decides anew
    again = users.decide("alice@localhost")
    assert isinstance(again, XmppUser) and again.session.id != alice.session.id
    events = [e for e in counting.proxy().state().get()[1] if "alice" in e]
    assert events == ["connect alice@localhost", "disconnect alice@localhost gone", "connect alice@localhost"]


def test_a_refusal_is_cached_for_a_while(started: list[pykka.ActorRef[Any]]) -> None:
    jids = XmppJidHandler.start(authz=BridgeAuthz([]))
    started.append(jids)
    users = XmppUsers(HandlerChain([jids]), Tells(), refusal_ttl=0.0)
    assert isinstance(users.decide("a@x"), Refusal)
    assert users.known("a@x") is None  # expired at once with a TTL of 0


class Control:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def update_grant(self, grant: Grant) -> None:
        self.calls.append(("update_grant", grant))

    def disconnect(self, refusal: Refusal) -> None:
        self.calls.append(("disconnect", refusal))


def test_reload_rebuilds_the_rules_and_pushes_them(started: list[pykka.ActorRef[Any]]) -> None:
    ref = XmppJidHandler.start(
        settings=xmpp_settings(("alice@localhost", "bob@localhost", "carol@localhost"))
    )
    started.append(ref)
    h = ref.proxy()
    controls = {j: Control() for j in ("alice@localhost", "bob@localhost", "carol@localhost")}
    for sid, (jid, control) in enumerate(controls.items(), 1):
        session = Session(sid, "xmpp", "xmpp", ("", 0), 0, jid, jid, None, None, jid, control=control)
        h.on_connect(session, h.auth_connect(session).get())
    h.reload(
        xmpp_settings(
            ("alice@localhost", "carol@localhost"), (JidRuleSettings("carol@localhost", ("c/#",), ("c/#",)),)
        )
    ).get()
    assert controls["alice@localhost"].calls == []  # unchanged: nothing pushed
    [(op, refusal)] = controls["bob@localhost"].calls
    assert op == "disconnect" and refusal.reason.startswith("revoked: bob@localhost is not allowed")
    [(op, grant)] = controls["carol@localhost"].calls
    assert op == "update_grant" and grant.auth_publish("c/1", b"") and not grant.auth_publish("d", b"")
