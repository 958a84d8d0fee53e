"""Broker faults and graceful shutdown, under load."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import gevent
import pytest

from ferryman.protocols.mqtt.packets import Disconnect, Publish
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid

CONFIG = """
shutdown_timeout = 3.0
[metrics]
address = "127.0.0.1:{{metrics_port}}"
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{{port}}"
target = "tcp://127.0.0.1:{broker}"
[auth]
handler = "allow-all"
"""


def wait_metric(gw: GatewayProcess, name: str, value: float, timeout: float = 10) -> None:
    deadline = gevent.get_hub().loop.now() + timeout
    while gw.metric(name) != value:
        assert gevent.get_hub().loop.now() < deadline, f"{name} = {gw.metric(name)}, expected {value}"
        gevent.sleep(0.1)


def publisher(port: int, topic: str, stop: gevent.event.Event) -> int:
    c = RawClient(port, 4)
    c.connect(f"load-{uid()}")
    sent = 0
    try:
        while not stop.is_set():
            c.publish(topic, b"x" * 100)
            sent += 1
            if sent % 50 == 0:
                gevent.sleep(0.001)
    except OSError:
        pass
    return sent


def test_broker_killed_under_load_then_back(gateway_factory: object, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq")
    broker.start()
    try:
        gw: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port))  # type: ignore[operator]
        # The start-up probe's connection (tests/servers.py waits for the port) may still be open: the
        # baseline is what an idle gateway holds.
        wait_metric(gw, 'ferryman_connections_open{listener="mqtt"}', 0)
        baseline_actors = gw.metric("ferryman_actors")
        baseline_greenlets = gw.metric("ferryman_greenlets")
        t = uid()
        clients = [RawClient(gw.port, v) for v in (4, 5) * 4]
        for c in clients:
            assert c.connect(f"c-{uid()}").reason_code == 0
            c.subscribe(f"load/{t}")
        stop = gevent.event.Event()
        load = gevent.spawn(publisher, gw.port, f"load/{t}", stop)
        gevent.sleep(0.5)
        assert broker.proc is not None
        broker.proc.kill()  # SIGKILL: no DISCONNECT from the broker, sockets just die
        broker.proc.wait()
        for c in clients:
            assert c.closed_within(5)
        for c in clients:
            if c.version == 5:
                codes = [p.reason_code for p in c.inbox if isinstance(p, Disconnect)]
                assert codes == [0x89]  # "server busy": come back later (0x88 is CONNACK-only)
            assert c.framer.buffered == 0  # no half packet was left on the wire
        stop.set()
        assert load.get(timeout=10) > 0
        # while the broker is down: refused in MQTT's terms, not a silent close
        assert RawClient(gw.port, 4).connect(uid()).reason_code == 3
        assert RawClient(gw.port, 5).connect(uid()).reason_code == 0x88
        # nothing leaks
        wait_metric(gw, 'ferryman_connections_open{listener="mqtt"}', 0)
        wait_metric(gw, "ferryman_actors", baseline_actors)
        assert gw.metric("ferryman_greenlets") <= baseline_greenlets + 2
        # back as soon as the broker is
        broker.start()
        again = RawClient(gw.port, 5)
        assert again.connect(uid()).reason_code == 0
        again.subscribe(f"back/{t}")
        again.publish(f"back/{t}", b"hello again", qos=0)
        assert any(isinstance(p, Publish) and p.payload == b"hello again" for p in again.drain(1.0))
        again.disconnect()
    finally:
        broker.stop()


@pytest.mark.parametrize("version", [4, 5])
def test_sigterm_under_load_closes_every_session_cleanly(
    gateway_factory: object, broker: Mosquitto, version: int
) -> None:
    t = uid()
    gw: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port))  # type: ignore[operator]
    subs = [RawClient(gw.port, version) for _ in range(5)]
    for s in subs:
        assert s.connect(f"s-{uid()}").reason_code == 0
        s.subscribe(f"drain/{t}")
    stop = gevent.event.Event()
    loads = [gevent.spawn(publisher, gw.port, f"drain/{t}", stop) for _ in range(2)]
    gevent.sleep(0.5)
    rc, err = gw.stop(signal.SIGTERM, timeout=10)
    stop.set()
    gevent.joinall(loads, timeout=5)
    assert rc == 0 and "Traceback" not in err
    for s in subs:
        assert s.closed_within(5)
        assert s.framer.buffered == 0  # the last packet arrived whole
        if version == 5:
            assert isinstance(s.inbox[-1], Disconnect) and s.inbox[-1].reason_code == 0x8B
        assert any(isinstance(p, Publish) for p in s.inbox)  # the load did flow through it
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=2)
