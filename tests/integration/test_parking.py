"""Idle connections park (protocols/mqtt/parking.py): their pumps give back their greenlets, and everything
still works through a parked connection: publishes both ways, pings, the keepalive, a close. Real
mosquitto behind a real gateway process; the greenlet count comes from the gateway's /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ferryman.protocols.mqtt.constants import ReasonCode
from ferryman.protocols.mqtt.packets import (
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Subscription,
)
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid

CONFIG = """
[metrics]
address = "127.0.0.1:{metrics_port}"
[[listener]]
name = "parking"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{broker}"
park_idle_after = 0.3
[auth]
handler = "allow-all"
"""
CLIENTS = 20


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def connected(gw: GatewayProcess, prefix: str, n: int, keepalive: int = 60) -> list[RawClient]:
    clients = []
    for i in range(n):
        c = RawClient(gw.port, version=5)
        assert c.connect(f"{prefix}-{i}", keepalive=keepalive).reason_code == 0
        clients.append(c)
    return clients


def test_parked_connections_hold_no_greenlets_and_still_carry_everything(
    gateway_factory: Any, broker: Mosquitto
) -> None:
    gw = gateway_factory(CONFIG, fills={"broker": broker.port})
    baseline = gw.metric("ferryman_greenlets")
    topic = f"park/{uid()}"
    subs = connected(gw, f"sub-{uid()}", CLIENTS)
    for c in subs:
        c.send(Subscribe(c.next_pid(), [Subscription(topic + "/#", 1)]))
        c.expect(Suback)
    [publisher] = connected(gw, f"pub-{uid()}", 1)
    assert gw.metric("ferryman_connections_open") == CLIENTS + 1
    # Each connection's two pumps parked: no greenlet is left per connection.
    until(lambda: gw.metric("ferryman_greenlets") < baseline + 5, 10, "every pump parked")

    # The publisher is parked too: its uplink wakes for the PUBLISH, its downlink for the PUBACK.
    for n in range(3):
        pid = publisher.next_pid()
        publisher.send(Publish(f"{topic}/x", f"m{n}".encode(), qos=1, packet_id=pid))
        assert publisher.expect(Puback, 5).packet_id == pid
        for c in subs:  # every subscriber's parked downlink woke for the delivery
            got = c.recv(5)
            assert isinstance(got, Publish) and got.payload == f"m{n}".encode()
            if got.qos:
                c.send(Puback(got.packet_id))
        until(lambda: gw.metric("ferryman_greenlets") < baseline + 5, 10, f"parked again after round {n}")

    for c in subs[:5]:  # a ping through a parked connection, then a close while parked
        c.send(Pingreq())
        c.expect(Pingresp)
    until(lambda: gw.metric("ferryman_greenlets") < baseline + 5, 10, "parked after the pings")
    for c in [*subs, publisher]:
        c.sock.close()
    until(lambda: gw.metric("ferryman_connections_open") == 0, 10, "parked connections closed")
    assert gw.metric("ferryman_greenlets") < baseline + 5


def test_the_keepalive_holds_while_parked(gateway_factory: Any, broker: Mosquitto) -> None:
    """keepalive 2 s (x 1.2 here, so that the gateway acts well before the broker's own 1.5 x): the
    connection parks after 0.3 s and is still disconnected for silence, MQTT 5 DISCONNECT 0x8D; a
    connection that pings across parks lives on."""
    config = CONFIG.replace("park_idle_after = 0.3", "park_idle_after = 0.3\nkeepalive_factor = 1.2")
    gw = gateway_factory(config, fills={"broker": broker.port})
    baseline = gw.metric("ferryman_greenlets")
    silent, pinger = connected(gw, f"ka-{uid()}", 2, keepalive=2)
    until(lambda: gw.metric("ferryman_greenlets") <= baseline, 5, "both connections parked")
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        pinger.send(Pingreq())
        pinger.expect(Pingresp)
        time.sleep(0.6)  # longer than park_idle_after: it parks between pings
    got = silent.drain(0.5)
    assert got and isinstance(got[0], Disconnect), got
    assert got[0].reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT
    assert silent.closed_within(2)
    pinger.send(Pingreq())
    assert isinstance(pinger.recv(5), Pingresp)
    assert gw.metric("ferryman_connections_open") == 1
