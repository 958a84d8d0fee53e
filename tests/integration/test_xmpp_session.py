"""XmppSession (protocols/xmpp/session.py) against the real Prosody: component and client mode, inbound
chats routed as Messages through a real Router, send_chat, and reconnection after a server restart."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pykka
import pytest
from slixmpp import JID

from ferryman.actors.asyncio_host import AsyncioHost
from ferryman.actors.contracts import Message
from ferryman.actors.router import Router
from ferryman.config.schema import BridgeXmppSettings
from ferryman.protocols.xmpp import XmppSession
from ferryman.protocols.xmpp.session import KIND_CHAT, parse_server
from tests.integration.test_prosody import STEP, USERS, Client
from tests.prosody import Prosody

LIMIT = 15.0  # safety limits, never measured durations
BOT = ("gwbot", "gwbot-pw")


class Collector(pykka.ThreadingActor):
    """Stands in for a bridge handler: what the Router hands it lands in ``inbox``."""

    def __init__(self, inbox: queue.Queue[Message]) -> None:
        super().__init__()
        self.inbox = inbox

    def handle(self, message: Message) -> None:
        self.inbox.put(message)


@pytest.fixture
def routed() -> Iterator[tuple[pykka.ActorRef[Any], queue.Queue[Message]]]:
    inbox: queue.Queue[Message] = queue.Queue()
    router = Router.start()
    collector = Collector.start(inbox)
    router.proxy().register(KIND_CHAT, collector).get(timeout=STEP)
    yield router, inbox
    collector.stop(timeout=STEP)
    router.stop(timeout=STEP)


@pytest.fixture
def sessions() -> Iterator[Callable[..., pykka.ActorRef[XmppSession]]]:
    started: list[pykka.ActorRef[XmppSession]] = []

    def start(*args: Any, **kwargs: Any) -> pykka.ActorRef[XmppSession]:
        ref = XmppSession.start(*args, **kwargs)
        started.append(ref)
        return ref

    yield start
    for ref in started:
        if ref.is_alive():
            ref.stop(timeout=LIMIT)


def wait_until(check: Callable[[], bool], what: str, timeout: float = LIMIT) -> None:
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not check():
            gevent.sleep(0.05)


def connected(ref: pykka.ActorRef[XmppSession]) -> bool:
    return bool(ref.proxy().is_connected().get(timeout=STEP))


def login(host: AsyncioHost, server: Prosody, user: str) -> Client:
    """A logged-in test client, built on the host's loop (slixmpp binds the loop it is created on)."""

    async def make() -> Client:
        client = Client(server, user)
        await client.connect()
        return client

    return host.run(make(), LIMIT)


def say(host: AsyncioHost, client: Client, to: str, body: str) -> None:
    async def send() -> None:
        client.xmpp.send_message(mto=JID(to), mbody=body, mtype="chat")
        await client.sync()

    host.run(send(), LIMIT)


def component_settings(server: Prosody) -> BridgeXmppSettings:
    return BridgeXmppSettings(
        mode="component",
        jid=server.component_jid,
        secret=server.component_secret,
        server=f"127.0.0.1:{server.component_port}",
    )


def test_parse_server() -> None:
    assert parse_server("127.0.0.1:5347", 1) == ("127.0.0.1", 5347)
    assert parse_server("xmpp.example.org", 5222) == ("xmpp.example.org", 5222)
    assert parse_server("[::1]:5223", 1) == ("::1", 5223)
    assert parse_server("[::1]", 5222) == ("::1", 5222)


def test_component_mode_routes_inbound_and_sends(
    prosody: Prosody, host: AsyncioHost, routed: Any, sessions: Any
) -> None:
    router, inbox = routed
    prosody.register("alice", USERS["alice"])
    session = sessions(component_settings(prosody), host, router, reconnect_min=0.1, reconnect_max=0.5)
    wait_until(lambda: connected(session), "the component session")
    alice = login(host, prosody, "alice")
    try:
        to = f"sensor1@{prosody.component_jid}"
        say(host, alice, to + "/ignored", "status?")
        msg = inbox.get(timeout=LIMIT)
        assert msg.kind == "xmpp.chat"
        assert msg.topic == prosody.jid("alice")
        assert msg.source.startswith(prosody.jid("alice") + "/")
        assert msg.payload == b"status?"
        assert msg.headers["to"] == to

        session.proxy().send_chat(prosody.jid("alice"), "from sensor1 ✓", sender=to).get(timeout=STEP)
        reply = host.run(alice.next_message(), LIMIT)
        assert reply["body"] == "from sensor1 ✓"
        assert reply["from"].bare == to

        session.proxy().send_chat(prosody.jid("alice"), "from the gateway").get(timeout=STEP)
        reply = host.run(alice.next_message(), LIMIT)
        assert reply["body"] == "from the gateway"
        assert reply["from"].full == prosody.component_jid
    finally:
        host.run(alice.disconnect(), LIMIT)


def test_client_mode_routes_inbound_and_sends(
    prosody: Prosody, host: AsyncioHost, routed: Any, sessions: Any
) -> None:
    router, inbox = routed
    prosody.register("alice", USERS["alice"])
    prosody.register(*BOT)
    settings = BridgeXmppSettings(
        mode="client", jid=prosody.jid(BOT[0]), secret=BOT[1], server=f"127.0.0.1:{prosody.c2s_port}"
    )
    session = sessions(settings, host, router, reconnect_min=0.1, reconnect_max=0.5)
    wait_until(lambda: connected(session), "the client session")
    alice = login(host, prosody, "alice")
    try:
        say(host, alice, prosody.jid(BOT[0]), "GET devices")
        msg = inbox.get(timeout=LIMIT)
        assert (msg.kind, msg.topic, msg.payload) == ("xmpp.chat", prosody.jid("alice"), b"GET devices")
        assert msg.headers["to"] == prosody.jid(BOT[0])

        session.proxy().send_chat(prosody.jid("alice"), "devices: none").get(timeout=STEP)
        reply = host.run(alice.next_message(), LIMIT)
        assert reply["body"] == "devices: none"
        assert reply["from"].bare == prosody.jid(BOT[0])
    finally:
        host.run(alice.disconnect(), LIMIT)


def test_client_mode_wrong_password_keeps_retrying_without_connecting(
    prosody: Prosody, host: AsyncioHost, sessions: Any
) -> None:
    prosody.register(*BOT)
    settings = BridgeXmppSettings(
        mode="client", jid=prosody.jid(BOT[0]), secret="wrong", server=f"127.0.0.1:{prosody.c2s_port}"
    )
    session = sessions(settings, host, None, reconnect_min=0.05, reconnect_max=0.2)
    gevent.sleep(1.0)
    assert not connected(session)
    session.stop(timeout=LIMIT)  # stops cleanly while retrying


def test_reconnects_after_server_restart(
    tmp_path: Path, host: AsyncioHost, routed: Any, sessions: Any
) -> None:
    router, inbox = routed
    server = Prosody(tmp_path / "prosody", component_secret="restart-secret")
    server.start()
    try:
        session = sessions(component_settings(server), host, router, reconnect_min=0.1, reconnect_max=0.5)
        wait_until(lambda: connected(session), "the first session")

        server.stop()
        wait_until(lambda: not connected(session), "the session to notice the server is gone")
        # sent while down: queued, flushed on the next session (to the component itself, through prosody)
        loopback = f"loop@{server.component_jid}"
        session.proxy().send_chat(
            loopback, "queued while down", sender=f"sensor1@{server.component_jid}"
        ).get(timeout=STEP)
        server.start()  # same ports
        wait_until(lambda: connected(session), "the session to reconnect")
        msg = inbox.get(timeout=LIMIT)
        assert msg.payload == b"queued while down"
        assert msg.topic == f"sensor1@{server.component_jid}"
        assert msg.headers["to"] == loopback
        assert session.proxy().sessions.get(timeout=STEP) >= 2

        server.register("alice", USERS["alice"])  # the restarted server has a fresh data dir
        alice = login(host, server, "alice")
        try:
            say(host, alice, f"relay@{server.component_jid}", "again")
            msg = inbox.get(timeout=LIMIT)
            assert (msg.topic, msg.payload) == (server.jid("alice"), b"again")
            session.proxy().send_chat(server.jid("alice"), "welcome back").get(timeout=STEP)
            reply = host.run(alice.next_message(), LIMIT)
            assert reply["body"] == "welcome back"
        finally:
            host.run(alice.disconnect(), LIMIT)
        session.stop(timeout=LIMIT)
    finally:
        server.stop()
