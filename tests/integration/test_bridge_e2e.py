"""The XMPP <-> MQTT bridge end to end, as a user tries it: `ferryman run` with [bridge.*], a real prosody
(the gateway as the XEP-0114 component gw.localhost), a real mosquitto, an XMPP user on slixmpp and the
independent mosquitto_pub on the MQTT side."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ferryman.actors.asyncio_host import AsyncioHost
from tests.integration.test_prosody import USERS, Client
from tests.prosody import Prosody
from tests.servers import GatewayProcess, Mosquitto

LIMIT = 15.0  # safety limits only

CONFIG = """
listener = []
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{{port}}"

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "bridge-{uid}"

[bridge.xmpp]
mode = "component"
jid = "{component}"
secret = "{secret}"
server = "127.0.0.1:{component_port}"
allowed_jids = ["alice@localhost"]
store = "{{workdir}}/bridge.sqlite3"
"""


@pytest.fixture(scope="module")
def xmpp(prosody: Prosody) -> Prosody:
    for user in ("alice", "bob"):
        prosody.register(user, USERS[user])
    return prosody


def login(host: AsyncioHost, server: Prosody, user: str) -> Client:
    async def make() -> Client:
        client = Client(server, user)
        await client.connect()
        return client

    client: Client = host.run(make(), LIMIT)
    return client


def say(host: AsyncioHost, client: Client, body: str, to: str = "gw.localhost") -> None:
    from slixmpp import JID

    async def send() -> None:
        client.xmpp.send_message(mto=JID(to), mbody=body, mtype="chat")

    host.run(send(), LIMIT)


def reply(host: AsyncioHost, client: Client, want: Callable[[str], bool], timeout: float = LIMIT) -> str:
    """The next chat body satisfying ``want`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message: Any = host.run(client.next_message(), LIMIT)
        except TimeoutError:
            continue
        body = str(message["body"])
        if want(body):
            return body
    raise AssertionError("no matching reply")


def until_answered(host: AsyncioHost, client: Client, text: str, want: Callable[[str], bool]) -> str:
    """Says ``text`` until a matching reply comes: the gateway's XMPP session connects asynchronously."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        say(host, client, text)
        try:
            return reply(host, client, want, timeout=1.0)
        except AssertionError:
            continue
    raise AssertionError(f"no answer to {text!r}")


def mosquitto_pub(broker: Mosquitto, topic: str, payload: bytes) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-s"],
        input=payload,
        check=True,
        timeout=10,
    )


@pytest.fixture
def gateway(gateway_factory: Any, broker: Mosquitto, xmpp: Prosody) -> GatewayProcess:
    config = CONFIG.format(
        broker=broker.port,
        uid=uuid.uuid4().hex[:6],
        component=xmpp.component_jid,
        secret=xmpp.component_secret,
        component_port=xmpp.component_port,
    )
    gw: GatewayProcess = gateway_factory(config)
    return gw


def test_acceptance_subscribe_receive_list_unsubscribe(
    gateway: GatewayProcess, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    t = uuid.uuid4().hex[:6]
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: b == "no subscriptions" or "\n" in b or "/" in b)
    say(host, alice, f"subscribe sensors{t}/+/temp")
    assert reply(host, alice, lambda b: b.startswith("subscribed")) == f"subscribed sensors{t}/+/temp"
    # the broker subscription is asynchronous: publish until the first message comes through
    deadline = time.monotonic() + 20
    while True:
        mosquitto_pub(broker, f"sensors{t}/k1/temp", b"21.5")
        try:
            reply(host, alice, lambda b: b == f"sensors{t}/k1/temp: 21.5", timeout=1.0)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "no delivery"
    mosquitto_pub(broker, f"sensors{t}/k2/temp", b"\xff\xfe")  # not UTF-8: arrives marked base64
    assert (
        reply(host, alice, lambda b: b.startswith(f"sensors{t}/k2/temp"))
        == f"sensors{t}/k2/temp: base64://4="
    )
    say(host, alice, "list")
    assert reply(host, alice, lambda b: "sensors" in b and ":" not in b) == f"sensors{t}/+/temp"
    say(host, alice, f"unsubscribe sensors{t}/+/temp")
    assert reply(host, alice, lambda b: b.startswith("unsubscribed")) == f"unsubscribed sensors{t}/+/temp"
    say(host, alice, "list")
    assert reply(host, alice, lambda b: b == "no subscriptions" or "sensors" in b) == "no subscriptions"


def test_acceptance_refused_jid_gets_an_error_and_nothing_is_subscribed(
    gateway: GatewayProcess, xmpp: Prosody, host: AsyncioHost
) -> None:
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: True)  # the gateway's session is up
    bob = login(host, xmpp, "bob")
    say(host, bob, "subscribe sensors/+/temp")
    assert reply(host, bob, lambda b: True).startswith("error: ")
    assert "bob@localhost" not in (
        gateway.stderr().split("subscribed")[0] if "subscribed" in gateway.stderr() else ""
    )


def test_publish_command_reaches_mqtt(
    gateway: GatewayProcess, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    t = uuid.uuid4().hex[:6]
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-t",
            f"cmd{t}/#",
            "-C",
            "1",
            "-W",
            "30",
            "-v",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        alice = login(host, xmpp, "alice")
        until_answered(host, alice, "list", lambda b: True)
        time.sleep(0.3)  # let mosquitto_sub subscribe (it prints nothing until the message)
        say(host, alice, f"publish cmd{t}/lamp on please")
        assert reply(host, alice, lambda b: b.startswith("published")) == f"published cmd{t}/lamp"
        out, _ = sub.communicate(timeout=30)
        assert out.strip() == f"cmd{t}/lamp on please"
    finally:
        if sub.poll() is None:
            sub.kill()


def test_refused_topics_for_a_jid_with_rules(
    gateway_factory: Any, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    """[[bridge.xmpp.rules]]: alice may subscribe to sensors/# and publish to cmd/# only."""
    config = (
        CONFIG.format(
            broker=broker.port,
            uid=uuid.uuid4().hex[:6],
            component=xmpp.component_jid,
            secret=xmpp.component_secret,
            component_port=xmpp.component_port,
        )
        + '[[bridge.xmpp.rules]]\njid = "alice@localhost"\npublish = ["cmd/#"]\nsubscribe = ["sensors/#"]\n'
    )
    gateway_factory(config)
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: True)
    say(host, alice, "subscribe secret/#")
    assert reply(host, alice, lambda b: True) == "error: not allowed to subscribe to secret/#"
    say(host, alice, "publish other/x hi")
    assert reply(host, alice, lambda b: True) == "error: not allowed to publish to other/x"
    say(host, alice, "subscribe sensors/a/#")
    assert reply(host, alice, lambda b: True) == "subscribed sensors/a/#"


def test_health_tells_how_the_bridge_sessions_are(gateway: GatewayProcess) -> None:
    """/health lists the bridge's MQTT and XMPP sessions: connected once they are, and the gateway's status
    stays "ok" meanwhile (the bridge's state is information, not a reason to restart the gateway)."""
    import json
    import urllib.request

    def health() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/health", timeout=5) as r:
            assert r.status == 200
            state: dict[str, Any] = json.loads(r.read())
            return state

    deadline = time.monotonic() + 30
    while True:
        state = health()
        parts = state["parts"]
        if parts["MqttBridgeClient"]["connected"] and parts["XmppSession"]["connected"]:
            break
        assert time.monotonic() < deadline, f"the bridge sessions never connected: {parts}"
        time.sleep(0.2)
    assert state["status"] == "ok"
    assert parts["MqttBridgeClient"]["connects"] >= 1
    assert parts["XmppSession"]["queued"] == 0
