"""The smartgrid rule set end to end: `ferryman run` with [bridge.smartgrid], a real prosody, a real
mosquitto, XMPP users on slixmpp and mosquitto_pub on the MQTT side. Exact strings from smartgrid-rules.md."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ferryman.actors.asyncio_host import AsyncioHost
from tests.integration.test_bridge_e2e import (  # noqa: F401  (xmpp is a fixture)
    CONFIG,
    LIMIT,
    login,
    mosquitto_pub,
    reply,
    say,
    until_answered,
    xmpp,
)
from tests.integration.test_prosody import Client
from tests.prosody import Prosody
from tests.servers import GatewayProcess, Mosquitto

SMARTGRID = """
[bridge.smartgrid]
root = "smartgrid/"
"""


@pytest.fixture
def gateway(gateway_factory: Any, broker: Mosquitto, xmpp: Prosody) -> GatewayProcess:  # noqa: F811
    config = CONFIG.format(
        broker=broker.port,
        uid=uuid.uuid4().hex[:6],
        component=xmpp.component_jid,
        secret=xmpp.component_secret,
        component_port=xmpp.component_port,
    ).replace('allowed_jids = ["alice@localhost"]', 'allowed_jids = ["alice@localhost", "bob@localhost"]')
    gw: GatewayProcess = gateway_factory(config + SMARTGRID)
    return gw


def ready(host: AsyncioHost, client: Client) -> None:
    """Waits until the gateway's XMPP session answers."""
    until_answered(host, client, "list", lambda b: b == "no subscriptions" or "/" in b)


def published_until(
    host: AsyncioHost,
    client: Client,
    broker: Mosquitto,
    topic: str,
    payload: bytes,
    want: Callable[[str], bool],
) -> str:
    """Publishes until ``client`` gets a matching chat: the broker subscription is made asynchronously."""
    deadline = time.monotonic() + 20
    while True:
        mosquitto_pub(broker, topic, payload)
        try:
            return reply(host, client, want, timeout=1.0)
        except AssertionError:
            assert time.monotonic() < deadline, f"nothing delivered for {topic}"


def bodies_until(host: AsyncioHost, client: Client, want: Callable[[str], bool]) -> list[str]:
    """Every chat body up to and including the first matching one."""
    seen: list[str] = []

    def record(body: str) -> bool:
        seen.append(body)
        return want(body)

    reply(host, client, record)
    return seen


def test_get_devices_variable_values_and_the_cache(
    gateway: GatewayProcess,
    broker: Mosquitto,
    xmpp: Prosody,  # noqa: F811
    host: AsyncioHost,
) -> None:
    dev = f"bat_{uuid.uuid4().hex[:6]}"
    alice = login(host, xmpp, "alice")
    ready(host, alice)

    say(host, alice, "GET devices")  # no reply until a value exists (nothing cached yet)
    devices = "\nDevices: \n\tbat_01\n\tth_01\n"
    got = published_until(
        host, alice, broker, "smartgrid/listOfDevices", b'["bat_01","th_01"]', lambda b: "Devices" in b
    )
    assert got == devices

    say(host, alice, f"GET power from {dev}")
    power = f"\nDevice: {dev}\n\tpower: 1111"
    got = published_until(
        host, alice, broker, f"smartgrid/{dev}/power", b'{"power":1111}', lambda b: b.startswith("\nDevice:")
    )
    assert got == power

    say(host, alice, f"get   VALUES {dev}")  # any whitespace, keywords in any case
    got = published_until(
        host, alice, broker, f"smartgrid/{dev}", b'[{"power":1}]', lambda b: b.startswith(f"\n{dev}:")
    )
    assert got == f"\n{dev}:\n\tpower : 1\n"

    # a value the publish loop above cannot have duplicated: once it arrived, nothing older is in flight
    mosquitto_pub(broker, f"smartgrid/{dev}/power", b'{"power":2222,"voltage":230}')
    assert reply(host, alice, lambda b: "2222" in b) == f"\nDevice: {dev}\n\tpower: 2222"
    # a second GET for a cached topic answers at once, with no new message
    say(host, alice, f"GET power from {dev}")
    assert (
        reply(host, alice, lambda b: b.startswith("\nDevice:"), timeout=5)
        == f"\nDevice: {dev}\n\tpower: 2222"
    )

    # GET alone (and other non-commands) -> usage, nothing subscribed
    say(host, alice, "GET")
    usage = reply(host, alice, lambda b: "usage:" in b)
    assert "GET devices" in usage and "GET <var> from <dev>" in usage
    say(host, alice, "list")
    listed = reply(host, alice, lambda b: "listOfDevices" in b)
    assert sorted(listed.splitlines()) == sorted(
        ["smartgrid/listOfDevices", f"smartgrid/{dev}/power", f"smartgrid/{dev}"]
    )


def test_unsubscribe_stops_and_invalid_json_is_not_sent(
    gateway: GatewayProcess,
    broker: Mosquitto,
    xmpp: Prosody,  # noqa: F811
    host: AsyncioHost,
) -> None:
    t = uuid.uuid4().hex[:6]
    dev = f"bat_{t}"
    alice = login(host, xmpp, "alice")
    ready(host, alice)
    say(host, alice, f"subscribe ctl{t}")  # a plain control topic
    assert reply(host, alice, lambda b: b.startswith("subscribed")) == f"subscribed ctl{t}"
    published_until(host, alice, broker, f"ctl{t}", b"up", lambda b: b == f"ctl{t}: up")

    say(host, alice, f"GET power from {dev}")
    published_until(
        host, alice, broker, f"smartgrid/{dev}/power", b'{"power":1}', lambda b: b.startswith("\nDevice:")
    )
    mosquitto_pub(broker, f"smartgrid/{dev}/power", b'{"power":2}')
    reply(host, alice, lambda b: "power: 2" in b)  # nothing older is in flight now

    # invalid JSON is not sent; the next valid message is (positive control)
    mosquitto_pub(broker, f"smartgrid/{dev}/power", b"not json {")
    mosquitto_pub(broker, f"smartgrid/{dev}/power", b'{"power":3}')
    seen = bodies_until(host, alice, lambda b: "power: 3" in b)
    assert seen == [f"\nDevice: {dev}\n\tpower: 3"]
    assert "not json" not in "".join(seen)
    deadline = time.monotonic() + LIMIT
    while "not sent" not in gateway.stderr():
        assert time.monotonic() < deadline, "the invalid payload was not logged"
        time.sleep(0.1)

    # ferryman's own unsubscribe covers smartgrid topics
    say(host, alice, f"unsubscribe smartgrid/{dev}/power")
    assert reply(host, alice, lambda b: b.startswith("unsubscribed")) == f"unsubscribed smartgrid/{dev}/power"
    mosquitto_pub(broker, f"smartgrid/{dev}/power", b'{"power":4}')
    mosquitto_pub(broker, f"ctl{t}", b"after")
    seen = bodies_until(host, alice, lambda b: b == f"ctl{t}: after")
    assert not [b for b in seen if "power" in b], seen


def test_plain_subscriber_on_the_same_topic_keeps_plain_rendering_and_its_own_subscription(
    gateway: GatewayProcess,
    broker: Mosquitto,
    xmpp: Prosody,  # noqa: F811
    host: AsyncioHost,
) -> None:
    dev = f"th_{uuid.uuid4().hex[:6]}"
    topic = f"smartgrid/{dev}/temp"
    alice = login(host, xmpp, "alice")
    bob = login(host, xmpp, "bob")
    ready(host, alice)
    say(host, bob, f"subscribe {topic}")
    assert reply(host, bob, lambda b: b.startswith("subscribed")) == f"subscribed {topic}"
    say(host, alice, f"GET temp from {dev}")
    rendered = published_until(
        host, alice, broker, topic, b'{"temp":21}', lambda b: b.startswith("\nDevice:")
    )
    assert rendered == f"\nDevice: {dev}\n\ttemp: 21"
    assert reply(host, bob, lambda b: b.startswith(topic)) == f'{topic}: {{"temp":21}}'

    # bob's unsubscribe does not cancel the broker subscription alice still needs (and the reverse)
    say(host, bob, f"unsubscribe {topic}")
    assert reply(host, bob, lambda b: b.startswith("unsubscribed")) == f"unsubscribed {topic}"
    mosquitto_pub(broker, topic, b'{"temp":22}')
    assert reply(host, alice, lambda b: "temp: 22" in b) == f"\nDevice: {dev}\n\ttemp: 22"
    say(host, bob, f"subscribe {topic}")
    reply(host, bob, lambda b: b.startswith("subscribed"))
    say(host, alice, f"unsubscribe {topic}")
    assert reply(host, alice, lambda b: b.startswith("unsubscribed")) == f"unsubscribed {topic}"
    published_until(host, bob, broker, topic, b'{"temp":23}', lambda b: b == f'{topic}: {{"temp":23}}')
