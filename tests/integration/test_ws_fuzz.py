"""Fuzzing the mqtt-ws listener's frame layer, live (like test_fuzz_live.py for MQTT): targeted
adversarial frame streams (bad opcodes, RSV bits, unmasked client frames, fragmented or oversized control
frames, 64-bit lengths with the top bit set, huge declared lengths, interleaved fragments, ping floods,
close frames with invalid codes or reasons), each answered with the close code RFC 6455 gives, then a storm
of targeted cases and random mutations of valid streams while a good WebSocket client publishes through
the same gateway. Nothing may escape a session (no traceback in the gateway's log), the good client loses
nothing, and no connection is left open. Bounded: a few seconds."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import gevent
import gevent.pool
import pytest

from ferryman.protocols.mqtt.packets import Puback, Publish
from tests.fuzz_live import LogWatch, metric
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid
from tests.ws_fuzz import WsCase, mutate, run_ws_case, valid_stream, ws_cases
from tests.wsclient import WsClient

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{metrics_port}"

[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "127.0.0.1:{port0}"
target = "tcp://127.0.0.1:{broker}"
path_prefix = "/mqtt"
connect_timeout = 2.0

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
"""

OPEN = 'ferryman_connections_open{listener="ws"}'
CASES = ws_cases()


@pytest.fixture(scope="module")
def gw(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("ws-fuzz"), CONFIG, fills={"broker": broker.port})
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def problems_of(case: WsCase, code: int | None, closed: bool) -> list[str]:
    if not case.codes:
        return []
    out = []
    if code not in case.codes:
        out.append(f"close code {code}, expected one of {sorted(case.codes)}")
    if not closed:
        out.append("the connection was not closed")
    return out


def run(port: int, case: WsCase) -> tuple[int | None, bool]:
    code, closed, _ = run_ws_case(port, case.stream, case.connect, 3.0 if case.codes else 0.3)
    return code, closed


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_ws_adversarial_stream(gw: GatewayProcess, case: WsCase) -> None:
    log = LogWatch(gw.stderr)
    code, closed = run(gw.port, case)
    problems = problems_of(case, code, closed)
    assert not problems, f"{case.name}: {problems}"
    assert not log.escaped(0.05), f"{case.name}: exception escaped:\n" + "\n".join(log.escaped(0))


@dataclass
class StormResult:
    cases: int = 0
    closed: int = 0
    codes: dict[int | None, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def storm_one(port: int, rnd: random.Random, result: StormResult) -> None:
    pick = rnd.random()
    if pick < 0.4:
        case = rnd.choice(CASES)
    elif pick < 0.8:
        case = WsCase("mutated", mutate(valid_stream(rnd, f"dev1/fz/{uid()}"), rnd))
    else:  # a mutated targeted case: no oracle, only "nothing escapes"
        base = rnd.choice(CASES)
        case = WsCase("mutated-" + base.name, mutate(base.stream, rnd), connect=base.connect)
    try:
        code, closed = run(port, case)
    except (OSError, AssertionError) as exc:  # a mutation may make the gateway close before the CONNACK
        if case.codes:
            result.problems.append(f"{case.name}: {exc!r}")
        return
    result.cases += 1
    result.closed += closed
    result.codes[code] = result.codes.get(code, 0) + 1
    result.problems += [f"{case.name}: {p}" for p in problems_of(case, code, closed)]


def good_ws_client(port: int, topic: str, count: int) -> int:
    """A well-behaved 3.1.1 client over WebSocket publishing QoS 1; returns how many were acknowledged."""
    c = WsClient(port)
    try:
        assert c.mqtt_connect(f"good-{uid()}", 4).reason_code == 0
        for i in range(count):
            c.send(Publish(topic, str(i).encode(), qos=1, packet_id=i % 65535 + 1), 4)
            ack = c.next_packet(4)
            assert isinstance(ack, Puback) and ack.packet_id == i % 65535 + 1, ack
            gevent.sleep(0.002)
        return count
    finally:
        c.close()


def test_storm_of_adversarial_ws_connections(gw: GatewayProcess, broker: Mosquitto) -> None:
    """300 adversarial WebSocket connections, 40 at a time (targeted cases, mutations of valid streams
    and of the targeted ones), while a good WebSocket client publishes 200 QoS 1 messages through the same
    gateway: every targeted case still gets its close code, the good client loses nothing, nothing
    escapes a session and no connection is left open."""
    rnd = random.Random(int.from_bytes(os.urandom(4)) if os.environ.get("WS_FUZZ_RANDOM") else 20261202)
    open_before = metric(gw.metrics_port, OPEN)
    log = LogWatch(gw.stderr)
    t = uid()
    watcher = RawClient(broker.port, 5)
    watcher.connect(f"w-{t}")
    watcher.subscribe(f"dev1/{t}/#")
    result = StormResult()
    worker = gevent.spawn(good_ws_client, gw.port, f"dev1/{t}/n", 200)
    pool = gevent.pool.Pool(40)
    for _ in range(300):
        pool.spawn(storm_one, gw.port, rnd, result)
    pool.join(timeout=60)
    sent = worker.get(timeout=60)
    got = [p for p in watcher.drain(1.0) if isinstance(p, Publish)]
    watcher.disconnect()
    deadline = time.monotonic() + 5
    while metric(gw.metrics_port, OPEN) > open_before and time.monotonic() < deadline:
        time.sleep(0.1)
    open_after = metric(gw.metrics_port, OPEN)

    problems = list(result.problems)
    if [int(p.payload) for p in got] != list(range(sent)) or sent != 200:
        problems.append(f"good client: sent {sent}, the broker got {len(got)} (lost or reordered)")
    if result.cases < 250:
        problems.append(f"only {result.cases} of 300 storm connections ran")
    if open_after > open_before:
        problems.append(f"connections left open: {open_before} before, {open_after} after")
    escaped = log.escaped(0.2)
    if escaped:
        problems.append("exceptions escaped:\n" + "\n".join(escaped[:20]))
    summary = f"{result.cases} cases, closed {result.closed}, close codes {result.codes}"
    assert not problems, summary + "\n" + "\n".join(problems[:40])
