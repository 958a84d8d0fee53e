"""XMPP users go through the same handler chain as every other protocol: a plug-in handler (a ``[[handler]]``
table) refuses one JID, restricts another's topics, rewrites or drops an XMPP user's publishes and
deliveries with its grant's interceptors, and replaces a grant or ends a session live (``SessionControl``);
the smartgrid rule set's GET is judged by the same grant; a reload rebuilds the ``[bridge.xmpp]`` JID
rules and revokes a JID taken out of ``allowed_jids``.

In process (ferryman as a library, so the test can hold the plug-in's actor), against a real prosody and a
real mosquitto; the XMPP users are slixmpp clients."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from ferryman.actors.asyncio_host import AsyncioHost
from ferryman.actors.contracts import Direction, Grant, Refusal, RefusalCode, Session
from ferryman.actors.gateway import Gateway
from ferryman.actors.handler import HandlerActor
from ferryman.bridge_wiring import build_bridge
from ferryman.protocols.mqtt.packets import Publish
from ferryman.wiring import HANDLERS, LISTENERS, load_settings
from tests.integration.test_bridge_e2e import login, mosquitto_pub, reply, say, until_answered
from tests.integration.test_prosody import USERS
from tests.prosody import Prosody
from tests.rawclient import RawClient
from tests.servers import Mosquitto

CONFIG = """
listener = []
[log]
level = "debug"
[metrics]
address = ""

[[handler]]
name = "jid-policy"

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "bridge-{uid}"

[bridge.xmpp]
mode = "component"
jid = "{component}"
secret = "{secret}"
server = "127.0.0.1:{component_port}"
allowed_jids = [{allowed}]
store = "{store}"

[bridge.smartgrid]
root = "smartgrid/"
"""

ALICE, BOB, CAROL = "alice@localhost", "bob@localhost", "carol@localhost"


class Censor:
    """Up: ``drop`` is consumed, ``shout`` is upper-cased. Down: ``secret`` is not delivered."""

    def intercept(self, session: Session, packet: Any, direction: Direction) -> Any | None:
        if not isinstance(packet, Publish):
            return packet
        if direction is Direction.UP and packet.payload == b"drop":
            return None
        if direction is Direction.UP and packet.payload == b"shout":
            return Publish(packet.topic, b"SHOUT", packet.qos, packet.retain, packet_id=packet.packet_id)
        if direction is Direction.DOWN and packet.payload == b"secret":
            return None
        return packet


class JidPolicy(HandlerActor):
    """A plug-in: abstains for devices; for XMPP users refuses carol and the banned, keeps bob to bob/#,
    lets everyone else through its Censor."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.banned = {CAROL}
        self.live: dict[str, Session] = {}

    def auth_connect(self, session: Session) -> Grant | Refusal | None:
        if session.protocol != "xmpp":
            return None
        assert session.identity == session.username and session.password is None
        if session.identity in self.banned:
            return Refusal(RefusalCode.BANNED, f"{session.identity} is banned by policy")
        if session.identity == BOB:
            return Grant(["bob/#"], ["bob/#"])
        return Grant(["#"], ["#"], interceptors=[Censor()])

    def on_connect(self, session: Session, grant: Grant) -> None:
        if session.identity is not None:
            self.live[session.identity] = session

    def on_disconnect(self, session: Session, reason: str) -> None:
        if self.live.get(session.identity or "") is session:
            del self.live[session.identity or ""]

    def narrow(self, jid: str, grant: Grant) -> None:
        control = self.live[jid].control
        assert control is not None
        control.update_grant(grant)

    def ban(self, jid: str) -> None:
        self.banned.add(jid)
        control = self.live[jid].control
        assert control is not None
        control.disconnect(Refusal(RefusalCode.BANNED, "banned by policy"))


@pytest.fixture(scope="module")
def xmpp(prosody: Prosody) -> Prosody:
    for user in ("alice", "bob", "carol"):
        prosody.register(user, USERS[user])
    return prosody


def _write(path: Path, broker: Mosquitto, server: Prosody, uid: str, allowed: list[str]) -> Path:
    path.write_text(
        CONFIG.format(
            broker=broker.port,
            uid=uid,
            component=server.component_jid,
            secret=server.component_secret,
            component_port=server.component_port,
            allowed=", ".join(f'"{j}"' for j in allowed),
            store=path.parent / "bridge.sqlite3",
        )
    )
    return path


@pytest.fixture
def gateway(broker: Mosquitto, xmpp: Prosody, tmp_path: Path) -> Iterator[Gateway]:
    cfg = _write(tmp_path / "gw.toml", broker, xmpp, uuid.uuid4().hex[:6], [ALICE, BOB, CAROL])
    handlers = {**HANDLERS, "jid-policy": JidPolicy}
    gw = Gateway(load_settings(cfg), LISTENERS, handlers, components=[build_bridge])
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def _policy(gw: Gateway) -> Any:
    refs = [r for r in gw.handlers if r.actor_class is JidPolicy]
    assert len(refs) == 1
    ref: pykka.ActorRef[Any] = refs[0]
    return ref.proxy()


def test_a_plugin_handler_refuses_restricts_and_intercepts_xmpp_users(
    gateway: Gateway, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    t = uuid.uuid4().hex[:6]
    alice, bob, carol = (login(host, xmpp, u) for u in ("alice", "bob", "carol"))
    until_answered(host, alice, "list", lambda b: b == "no subscriptions")

    # refused by the plug-in although allowed_jids has carol
    say(host, carol, "list")
    assert reply(host, carol, lambda b: True) == f"error: {CAROL} is not allowed to use this gateway"

    # bob is kept to bob/# by the plug-in (the JID rules alone would give him everything)
    for command, answer in [
        (f"subscribe other{t}/#", f"error: not allowed to subscribe to other{t}/#"),
        (f"publish other{t}/x y", f"error: not allowed to publish to other{t}/x"),
        (f"subscribe bob/{t}/#", f"subscribed bob/{t}/#"),
        # the smartgrid rule set's subscriptions are judged by the same grant
        (f"GET power from dev{t}", f"error: not allowed to subscribe to smartgrid/dev{t}/power"),
    ]:
        say(host, bob, command)
        assert reply(host, bob, lambda b: True) == answer, command

    # alice's publishes go through the plug-in's interceptor: rewritten, or consumed and answered as sent
    watch = RawClient(broker.port, 5)
    watch.connect(f"w-{t}")
    watch.subscribe(f"up{t}/#", qos=1)
    say(host, alice, f"publish up{t}/a shout")
    assert reply(host, alice, lambda b: True) == f"published up{t}/a"
    got = watch.expect(Publish)
    assert (got.topic, got.payload) == (f"up{t}/a", b"SHOUT")
    say(host, alice, f"publish up{t}/b drop")
    assert reply(host, alice, lambda b: True) == f"published up{t}/b"
    say(host, alice, f"publish up{t}/c marker")
    assert reply(host, alice, lambda b: True) == f"published up{t}/c"
    got = watch.expect(Publish)
    assert (got.topic, got.payload) == (f"up{t}/c", b"marker")  # nothing of up/b reached the broker
    watch.disconnect()

    # and so do the messages coming back to her: "secret" is not delivered
    say(host, alice, f"subscribe down{t}/#")
    assert reply(host, alice, lambda b: True) == f"subscribed down{t}/#"
    until_answered_by_broker(host, alice, broker, f"down{t}/x")
    mosquitto_pub(broker, f"down{t}/x", b"secret")
    mosquitto_pub(broker, f"down{t}/x", b"visible")
    assert reply(host, alice, lambda b: b.startswith(f"down{t}/")) == f"down{t}/x: visible"

    # live: a narrower grant for alice, then bob's session ended and refused from then on
    policy = _policy(gateway)
    policy.narrow(ALICE, Grant([f"down{t}/#"], [f"down{t}/#"])).get(timeout=5)
    say(host, alice, f"publish up{t}/d y")
    assert reply(host, alice, lambda b: True) == f"error: not allowed to publish to up{t}/d"
    policy.ban(BOB).get(timeout=5)
    assert reply(host, bob, lambda b: True) == "error: banned by policy"
    say(host, bob, "list")
    assert reply(host, bob, lambda b: True) == f"error: {BOB} is not allowed to use this gateway"


def until_answered_by_broker(host: AsyncioHost, client: Any, broker: Mosquitto, topic: str) -> None:
    """Publishes a harmless marker until ``client`` gets it: the bridge subscribes asynchronously."""
    for _ in range(100):
        mosquitto_pub(broker, topic, b"ready")
        try:
            reply(host, client, lambda b: b == f"{topic}: ready", timeout=0.3)
            return
        except AssertionError:
            continue
    raise AssertionError("the bridge never delivered on " + topic)


def test_reload_rebuilds_the_jid_rules_and_revokes_live_users(
    gateway: Gateway, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost, tmp_path: Path
) -> None:
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: b == "no subscriptions")
    uid = gateway.settings.bridge.mqtt.client_id.removeprefix("bridge-")
    gateway.reload(load_settings(_write(tmp_path / "gw.toml", broker, xmpp, uid, [BOB])))
    assert reply(host, alice, lambda b: True).startswith(f"error: revoked: {ALICE} is not allowed")
    say(host, alice, "list")
    assert reply(host, alice, lambda b: True) == f"error: {ALICE} is not allowed to use this gateway"
