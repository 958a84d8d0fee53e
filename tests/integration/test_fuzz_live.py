"""Fuzzing, live listener: the ``proxy`` gateway gets targeted adversarial streams (one test each, with the
answer the spec or the README's refusals table gives) and a storm of hundreds of connections with random
mutations, while a well-behaved client publishes through the same gateway. Nothing may escape a session
(no traceback, no "connection ... failed" in the gateway's log), bad connections close within a bound
with the right reason code, the gateway's RSS stays within a bound, and the good client loses nothing.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any

import gevent
import gevent.pool
import pytest

from ferryman.protocols.mqtt.packets import (
    Connack,
    Publish,
    Pubrec,
)
from tests.fuzz_codec import (
    MALFORMED,
    PROTOCOL_ERROR,
    TOPIC_ALIAS_INVALID,
    connect_raw,
    mstr,
    p_u16,
    pblock,
    pkt,
    publish_raw,
)
from tests.fuzz_live import (
    STORM_CONCURRENCY,
    STORM_CONNECTIONS,
    LiveCase,
    LogWatch,
    StormResult,
    _v5,
    case_problems,
    escaped_kinds,
    exchange,
    good_client,
    live_cases,
    metric,
    rss_kib,
    run_case,
    spec_cases,
    storm,
    storm_case,
    uid,
)

# ======================================================================================= live tests


@pytest.mark.parametrize("case", live_cases(), ids=lambda c: c.name)
def test_live_adversarial_stream(proxy: Any, case: LiveCase) -> None:
    log = LogWatch(proxy.stderr)
    got = run_case(proxy.port, case, wait=3.0 if case.closed else 1.0)
    problems = case_problems(case, got, bound=3.0)
    assert not problems, f"{case.name}: {problems}"
    assert not log.escaped(), f"{case.name}: exception escaped:\n" + "\n".join(log.escaped(0))


@pytest.mark.parametrize("case", spec_cases(), ids=lambda c: c.name)
def test_v3_empty_client_id_without_clean_session_gets_connack_2(proxy: Any, case: LiveCase) -> None:
    """MQTT-3.1.3-8 (3.1.1) and 3.1's "Identifier Rejected": CONNACK 0x02, then close."""
    got = run_case(proxy.port, case)
    assert not case_problems(case, got, bound=3.0), f"{case.name}: {case_problems(case, got, bound=3.0)}"


@pytest.mark.parametrize(
    "partial", [b"", b"\x10\x20\x00\x04MQ", connect_raw(4, "c")[:-1]], ids=["empty", "mid-header", "mid-body"]
)
def test_tcp_reset_before_connect_is_not_an_error(proxy: Any, partial: bytes) -> None:
    """A device that resets its socket (power loss, NAT timeout, a scanner) before its CONNECT is whole is
    ordinary network life: the gateway closes that connection quietly, it does not log it as a failed
    connection with a traceback."""
    log = LogWatch(proxy.stderr)
    segments: tuple[bytes | float, ...] = (partial, 0.1) if partial else (0.1,)
    exchange(proxy.port, segments, 4, rst=True)
    assert not log.escaped(0.5), "exception escaped:\n" + "\n".join(log.escaped(0))


@pytest.mark.parametrize("pubrel", [b"\x62\x00", b"\x62\x01\x00"], ids=["empty-body", "one-byte-body"])
def test_short_pubrel_after_a_refused_qos2_publish(proxy: Any, pubrel: bytes) -> None:
    """3.1.1, refused QoS 2 PUBLISH (acknowledged by the proxy, which then answers the PUBREL itself), then a
    PUBREL whose body is too short for a packet identifier: a Malformed Packet, so the connection is closed,
    and nothing escapes the session."""
    log = LogWatch(proxy.stderr)
    refused = publish_raw(b"other/topic", qos=2, pid=1)
    case = LiveCase("short-pubrel", 4, (refused, 0.2, pubrel))
    got = run_case(proxy.port, case)
    assert [type(p) for p in got.packets[:2]] == [Connack, Pubrec]
    assert got.closed
    assert not log.escaped(), "exception escaped:\n" + "\n".join(log.escaped(0))


# MQTT 5 packets the proxy forwards without reading their bodies. Each is a Malformed Packet (spec 3.6.2,
# 3.12, 3.10.3, 3.4.2.1): the README's refusals table promises DISCONNECT 0x81 and a close.
UNVALIDATED = {
    "pubrel-empty-body": b"\x62\x00",
    "pubrec-one-byte-body": b"\x50\x01\x00",
    "pingreq-with-body": b"\xc0\x01\x00",
    "unsubscribe-bad-utf8": pkt(0xA2, b"\x00\x01\x00" + mstr(b"\xc3\x28")),
    "puback-reason-0xff": b"\x40\x03\x00\x01\xff",
    "puback-trailing-property-garbage": b"\x40\x06\x00\x01\x00\x02\x07\x00",
    "pubcomp-unknown-property": b"\x70\x06\x00\x01\x00\x02\x07\x00",
}


@pytest.mark.parametrize("name", sorted(UNVALIDATED))
def test_v5_malformed_acks_and_unsubscribes_get_disconnect_0x81(proxy: Any, name: str) -> None:
    got = run_case(proxy.port, _v5(name, UNVALIDATED[name], MALFORMED))
    problems = case_problems(_v5(name, UNVALIDATED[name], MALFORMED), got, bound=3.0)
    assert not problems, f"{name}: {problems}"


def test_v5_auth_without_an_authentication_method_is_a_protocol_error(proxy: Any) -> None:
    """A client that named no Authentication Method in its CONNECT must not send AUTH (MQTT 5, 4.12): the
    proxy answers 0x82 itself; left to the broker, mosquitto dropped the connection and the proxy could
    only report the broker gone (0x89)."""
    case = _v5("auth-without-method", b"\xf0\x02\x18\x00", 0x82)
    problems = case_problems(case, run_case(proxy.port, case), bound=3.0)
    assert not problems, problems


def test_v5_unsubscribe_without_filters_is_a_protocol_error(proxy: Any) -> None:
    """Well-formed but forbidden: "An UNSUBSCRIBE packet with no Payload is a Protocol Error"
    (MQTT-3.10.3-2), so 0x82 rather than 0x81."""
    case = _v5("unsubscribe-no-filters", pkt(0xA2, b"\x00\x01\x00"), 0x82)
    problems = case_problems(case, run_case(proxy.port, case), bound=3.0)
    assert not problems, problems


@pytest.mark.parametrize("name", [b"MQTX", b"MQIsdp", b"mqtt"], ids=lambda b: b.decode())
def test_wrong_protocol_name_with_level_5_gets_a_well_formed_connack(proxy: Any, name: bytes) -> None:
    """README refusals table: an unsupported protocol gets "CONNACK 1 (a 3.1.1 CONNACK: the only one every
    client reads)"; MQTT 5 (3.1.2.2) also allows CONNACK 0x84. Either way the bytes must form a CONNACK
    some MQTT version can read: 20 02 00 01, or 20 03 00 84 00."""
    raw = pkt(0x10, mstr(name) + b"\x05\x02\x00\x3c\x00" + mstr("c"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(raw)
        answer = b""
        while True:
            data = sock.recv(100)
            if not data:
                break
            answer += data
    assert answer in (b"\x20\x02\x00\x01", b"\x20\x03\x00\x84\x00"), f"CONNACK bytes {answer.hex()}"


def test_v5_topic_alias_above_the_maximum_on_a_refused_topic_is_topic_alias_invalid(proxy: Any) -> None:
    """MQTT-3.3.2-9/10: a Topic Alias above the Topic Alias Maximum of the CONNACK (mosquitto's: 10) is a
    Protocol Error, DISCONNECT 0x94, whatever the topic. On an allowed topic the broker says so; on a
    topic the proxy refuses, the broker never sees it, and the proxy answers PUBACK 0x87 and keeps the
    connection (it does not read the Topic Alias Maximum the broker sent)."""
    case = _v5(
        "v5-alias-above-maximum-refused-topic",
        publish_raw(b"other/t", qos=1, props=pblock(p_u16(0x23, 475))),
        TOPIC_ALIAS_INVALID,
    )
    got = run_case(proxy.port, case)
    problems = case_problems(case, got, bound=3.0)
    assert not problems, problems


def test_v5_subscription_identifier_in_a_client_publish_is_a_protocol_error(proxy: Any) -> None:
    """MQTT-3.3.4-6: a PUBLISH from a client MUST NOT contain a Subscription Identifier; the server treats
    it as a Protocol Error (DISCONNECT 0x82). The proxy passes it on and mosquitto 2.0 ignores it."""
    case = _v5(
        "v5-publish-subscription-id", publish_raw(b"dev1/s", props=pblock(b"\x0b\x01")), PROTOCOL_ERROR
    )
    got = run_case(proxy.port, case)
    problems = case_problems(case, got, bound=3.0)
    assert not problems, problems


def test_storm_of_adversarial_connections(proxy: Any, broker: Any) -> None:
    """400 adversarial connections, 60 at a time (targeted cases, mutated streams after a 3.1.1 or 5
    CONNECT, garbage first, mutated CONNECTs, resets, bad PUBRELs), while a good client publishes 300 QoS 1
    messages through the same gateway. Nothing escapes a session, every connection the oracle calls bad is
    closed with its reason code, the good client loses nothing, no connection is left open and the
    gateway's RSS grows by less than 24 MiB over a warm-up storm of 100."""
    from tests.rawclient import RawClient

    assert proxy.proc is not None
    pid = proxy.proc.pid
    rnd = random.Random(20261122)
    targeted = live_cases()
    warm = StormResult()
    storm(proxy.port, (storm_case(rnd, targeted=targeted) for _ in range(100)), STORM_CONCURRENCY, warm)
    time.sleep(1.0)
    rss_before = rss_kib(pid)
    open_before = metric(proxy.metrics_port, 'ferryman_connections_open{listener="mqtt"}')
    log = LogWatch(proxy.stderr)

    t = uid()
    watcher = RawClient(broker.port, 5)
    watcher.connect(f"w-{t}")
    watcher.subscribe(f"dev1/{t}/#")
    result = StormResult()
    done = False
    worker = gevent.spawn(good_client, proxy.port, watcher, f"dev1/{t}/n", 300, lambda: done)
    storm(
        proxy.port,
        (storm_case(rnd, targeted=targeted) for _ in range(STORM_CONNECTIONS)),
        STORM_CONCURRENCY,
        result,
    )
    sent = worker.get(timeout=60)
    done = True
    got = [p for p in watcher.drain(1.5) if isinstance(p, Publish)]
    watcher.disconnect()
    time.sleep(1.0)
    rss_after = rss_kib(pid)
    open_after = metric(proxy.metrics_port, 'ferryman_connections_open{listener="mqtt"}')

    problems = list(result.problems)
    if [int(p.payload) for p in got] != list(range(sent)) or sent != 300:
        problems.append(f"good client: sent {sent}, the broker got {len(got)} (lost or reordered)")
    if result.cases < STORM_CONNECTIONS * 0.98:
        problems.append(f"only {result.cases} of {STORM_CONNECTIONS} storm connections ran")
    if open_after > open_before:
        problems.append(f"connections left open: {open_before} before, {open_after} after")
    growth = (rss_after - rss_before) / 1024
    if growth > 24:
        problems.append(f"RSS grew by {growth:.1f} MiB ({rss_before // 1024} -> {rss_after // 1024} MiB)")
    lines = log.escaped(0.2)
    if lines:
        kinds = "\n".join(f"  {n} x {k}" for k, n in escaped_kinds(log.new()).items())
        problems.append(f"{len(lines)} log lines of escaped exceptions; tracebacks:\n{kinds}")
    summary = (
        f"{result.cases} cases {result.by_kind}, closed {result.closed}, DISCONNECT codes "
        f"{ {hex(k): v for k, v in sorted(result.codes.items())} }, RSS {rss_before // 1024} -> "
        f"{rss_after // 1024} MiB"
    )
    assert not problems, summary + "\n" + "\n".join(problems[:40])
