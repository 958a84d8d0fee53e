"""The per-listener limits: connections (per listener, per source address), publish rate (throttle or
disconnect), and memory held for a device that does not read."""

from __future__ import annotations

import time

import gevent
import pytest

from ferryman.protocols.mqtt.packets import Disconnect, Publish
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid

BASE = """
[metrics]
address = "127.0.0.1:{{metrics_port}}"
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{{port}}"
target = "tcp://127.0.0.1:{broker}"
{extra}
[auth]
handler = "allow-all"
"""


def rss_kib(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    with open(f"/proc/{gw.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(("version", "code"), [(4, 3), (5, 0x97)])
def test_max_connections_per_listener(
    gateway_factory: object, broker: Mosquitto, version: int, code: int
) -> None:
    config = BASE.format(broker=broker.port, extra="max_connections = 3")
    gw: GatewayProcess = gateway_factory(config)  # type: ignore[operator]
    held = [RawClient(gw.port, version) for _ in range(3)]
    for c in held:
        assert c.connect(uid()).reason_code == 0
    over = RawClient(gw.port, version)
    assert over.connect(uid()).reason_code == code
    assert over.closed_within(3)
    held.pop().disconnect()
    gevent.sleep(0.3)
    again = RawClient(gw.port, version)
    assert again.connect(uid()).reason_code == 0  # a place came free
    assert "max_connections (3)" in gw.stderr()


def test_max_connections_per_source_address(gateway_factory: object, broker: Mosquitto) -> None:
    gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
        BASE.format(broker=broker.port, extra="max_connections_per_ip = 2")
    )
    a = [RawClient(gw.port, 5, source="127.0.0.1") for _ in range(2)]
    for c in a:
        assert c.connect(uid()).reason_code == 0
    assert RawClient(gw.port, 5, source="127.0.0.1").connect(uid()).reason_code == 0x97
    other = RawClient(gw.port, 5, source="127.0.0.2")  # another address has its own allowance
    assert other.connect(uid()).reason_code == 0
    a[0].disconnect()
    gevent.sleep(0.3)
    assert RawClient(gw.port, 5, source="127.0.0.1").connect(uid()).reason_code == 0


def test_rate_limit_throttles_without_losing_anything(gateway_factory: object, broker: Mosquitto) -> None:
    """50 PUBLISH/s with a burst of 10: 200 messages sent in one write arrive complete and in order, and
    cannot arrive faster than the rate allows (a lower bound only: slower machines only make it longer)."""
    t = uid()
    gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
        BASE.format(broker=broker.port, extra="publish_rate = 50\npublish_burst = 10")
    )
    sub = RawClient(broker.port, 4)
    assert sub.connect(f"s-{t}").reason_code == 0
    sub.subscribe(f"rate/{t}")
    pub = RawClient(gw.port, 4)
    assert pub.connect(f"p-{t}").reason_code == 0
    from ferryman.protocols.mqtt import codec

    started = time.monotonic()
    pub.send_raw(b"".join(codec.encode(Publish(f"rate/{t}", str(i).encode()), 4) for i in range(200)))
    got: list[int] = []
    while len(got) < 200:
        got.append(int(sub.expect(Publish, timeout=10).payload))
    elapsed = time.monotonic() - started
    assert got == list(range(200))
    assert elapsed >= 3.0, f"200 messages at 50/s (burst 10) took only {elapsed:.2f}s"
    assert 'ferryman_refusals_total{listener="mqtt",reason="throttled"}' in _metrics(gw)


@pytest.mark.parametrize("version", [4, 5])
def test_rate_limit_disconnect(gateway_factory: object, broker: Mosquitto, version: int) -> None:
    gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
        BASE.format(
            broker=broker.port, extra='publish_rate = 5\npublish_burst = 5\nrate_limit_action = "disconnect"'
        )
    )
    c = RawClient(gw.port, version)
    assert c.connect(uid()).reason_code == 0
    from ferryman.protocols.mqtt import codec

    c.send_raw(b"".join(codec.encode(Publish("flood/x", b"x"), version) for _ in range(50)))
    assert c.closed_within(5)
    if version == 5:
        assert [p.reason_code for p in c.inbox if isinstance(p, Disconnect)] == [0x96]


def test_a_device_that_does_not_read_cannot_grow_the_gateway(
    gateway_factory: object, broker: Mosquitto
) -> None:
    """TCP backpressure, not buffering: a subscriber that never reads while 40 MiB are published to it costs
    the gateway at most a read chunk and the socket buffers."""
    t = uid()
    gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
        BASE.format(broker=broker.port, extra="socket_buffer = 65536")
    )
    stuck = RawClient(gw.port, 4)
    assert stuck.connect(f"stuck-{t}").reason_code == 0
    stuck.subscribe(f"big/{t}")
    pub = RawClient(broker.port, 4)
    assert pub.connect(f"bigpub-{t}").reason_code == 0
    before = rss_kib(gw)
    from ferryman.protocols.mqtt import codec

    chunk = codec.encode(Publish(f"big/{t}", b"z" * 60000), 4)
    for _ in range(700):  # ~40 MiB at QoS 0; the broker queues or drops what the gateway does not take
        pub.send_raw(chunk)
    gevent.sleep(1.0)
    grown = rss_kib(gw) - before
    assert grown < 16 * 1024, f"gateway RSS grew by {grown} KiB while a subscriber did not read"
    pub.disconnect()
    stuck.close()


def _metrics(gw: GatewayProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()
