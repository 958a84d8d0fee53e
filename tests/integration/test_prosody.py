"""The real Prosody of the tests (config/prosody.cfg.lua, tests/prosody.py) with slixmpp clients.

slixmpp is asyncio and this process is gevent-patched, so every client lives on the project's
``AsyncioHost`` loop (its own real thread); each test is one coroutine run with ``host.run(..., LIMIT)``.
The clients speak plain TCP on 127.0.0.1 (no TLS in the test config) and log in with SCRAM-SHA-1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from slixmpp import JID, ClientXMPP, ComponentXMPP, Message

from ferryman.actors.asyncio_host import AsyncioHost
from tests.prosody import Prosody

LIMIT = 10.0  # a safety limit per test, never a measured duration
STEP = 5.0  # per awaited event
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}


@pytest.fixture(scope="module")
def xmpp(prosody: Prosody) -> Prosody:
    for user, password in USERS.items():
        prosody.register(user, password)
    return prosody


class Client:
    """A logged-in slixmpp client whose incoming chat messages land in ``inbox``."""

    def __init__(self, server: Prosody, user: str) -> None:
        self.xmpp = ClientXMPP(
            server.jid(user),
            USERS[user],
            plugin_config={"feature_mechanisms": {"unencrypted_scram": True}},
        )
        self.xmpp.enable_direct_tls = False  # the test server has no certificate: plain TCP only
        self.xmpp.enable_starttls = False
        self.xmpp.enable_plaintext = True
        self.xmpp.register_plugin("xep_0199")  # ping: a round trip through the server
        self.xmpp.register_plugin("xep_0203")  # delayed delivery stamps on offline messages
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.xmpp.add_event_handler("message", self.inbox.put_nowait)
        self.server = server

    async def connect(self, presence: bool = True) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def fail(reason: Any) -> None:
            if not ready.done():
                ready.set_exception(RuntimeError(f"{self.xmpp.boundjid}: {reason}"))

        def started(_: Any) -> None:
            if not ready.done():
                ready.set_result(None)

        self.xmpp.add_event_handler("session_start", started)
        self.xmpp.add_event_handler("failed_auth", fail)
        self.xmpp.add_event_handler("connection_failed", fail)
        self.xmpp.connect("127.0.0.1", self.server.c2s_port)
        await asyncio.wait_for(ready, STEP)
        if presence:
            self.xmpp.send_presence()
            await self.sync()

    async def sync(self) -> None:
        """Returns once the server has handled everything this client sent before (one stream, in order)."""
        await self.xmpp.plugin["xep_0199"].ping(JID(self.server.domain), timeout=STEP)

    async def next_message(self) -> Message:
        return await asyncio.wait_for(self.inbox.get(), STEP)

    async def disconnect(self) -> None:
        await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), STEP)


@asynccontextmanager
async def online(server: Prosody, *users: str) -> AsyncIterator[list[Client]]:
    clients = [Client(server, user) for user in users]
    try:
        for c in clients:
            await c.connect()
        yield clients
    finally:
        for c in clients:
            if c.xmpp.transport is not None:
                await c.disconnect()


def test_chat_between_two_users(xmpp: Prosody, host: AsyncioHost) -> None:
    async def scenario() -> Message:
        async with online(xmpp, "alice", "bob") as (alice, bob):
            alice.xmpp.send_message(mto=JID(xmpp.jid("bob")), mbody="hello bob, ünïcødé <&>", mtype="chat")
            return await bob.next_message()

    msg = host.run(scenario(), LIMIT)
    assert msg["body"] == "hello bob, ünïcødé <&>"
    assert msg["type"] == "chat"
    assert msg["from"].bare == xmpp.jid("alice")


def test_message_to_offline_user_is_delivered_at_login(xmpp: Prosody, host: AsyncioHost) -> None:
    async def scenario() -> Message:
        async with online(xmpp, "alice") as (alice,):
            alice.xmpp.send_message(mto=JID(xmpp.jid("carol")), mbody="kept for carol", mtype="chat")
            await alice.sync()  # stored by mod_offline before carol logs in
        async with online(xmpp, "carol") as (carol,):
            return await carol.next_message()

    msg = host.run(scenario(), LIMIT)
    assert msg["body"] == "kept for carol"
    assert msg["from"].bare == xmpp.jid("alice")
    assert msg["delay"]["stamp"] is not None  # XEP-0203: it really came from offline storage


def test_component_receives_and_replies(xmpp: Prosody, host: AsyncioHost) -> None:
    async def scenario() -> tuple[Message, Message]:
        component = ComponentXMPP(  # type: ignore[no-untyped-call]
            xmpp.component_jid, xmpp.component_secret, "127.0.0.1", xmpp.component_port
        )
        got: asyncio.Queue[Message] = asyncio.Queue()

        def on_message(msg: Message) -> None:
            got.put_nowait(msg)
            msg.reply(f"echo: {msg['body']}").send()  # type: ignore[no-untyped-call]

        component.add_event_handler("message", on_message)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def started(_: Any) -> None:
            if not ready.done():
                ready.set_result(None)

        component.add_event_handler("session_start", started)
        component.connect()
        try:
            await asyncio.wait_for(ready, STEP)
            async with online(xmpp, "dave") as (dave,):
                dave.xmpp.send_message(mto=JID(f"sensor1@{xmpp.component_jid}"), mbody="on", mtype="chat")
                seen = await asyncio.wait_for(got.get(), STEP)
                reply = await dave.next_message()
        finally:
            await asyncio.wait_for(component.disconnect(wait=1.0), STEP)
        return seen, reply

    seen, reply = host.run(scenario(), LIMIT)
    assert seen["body"] == "on"
    assert seen["from"].bare == xmpp.jid("dave")
    assert seen["to"].full == f"sensor1@{xmpp.component_jid}"
    assert reply["body"] == "echo: on"
    assert reply["from"].bare == f"sensor1@{xmpp.component_jid}"
