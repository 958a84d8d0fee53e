"""The proxy passes what its handler chain does not change byte for byte.

Two kinds of evidence:

* against the real mosquitto, the same packet sent once directly and once through the proxy must come out
  of the broker identically (uplink), and a packet the broker sends must reach a subscriber through the proxy
  exactly as it reaches a direct one (downlink). Only the packet identifier may differ (the broker assigns
  it per connection), and the Message Expiry Interval by the one second the broker may count down between
  two deliveries. The comparison is on the raw bytes: every packet compared is first checked to re-encode
  to its own bytes, so comparing normalized re-encodings is comparing the bytes;
* against a fake upstream (a plain socket in the test), the bytes the broker side receives must be exactly
  the bytes the device sent, CONNECT included, and the other way round.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.constants import PropertyId
from ferryman.protocols.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from tests.rawclient import Closed, RawClient
from tests.servers import GatewayProcess, Mosquitto, uid

EXPIRY = int(PropertyId.MESSAGE_EXPIRY_INTERVAL)
ASSIGNED_ID = int(PropertyId.ASSIGNED_CLIENT_IDENTIFIER)
USER = int(PropertyId.USER_PROPERTY)
ALL_BYTES = bytes(range(256))


def user_props() -> list[tuple[int, object]]:
    """Repeated keys, repeated pairs, empty strings and non-ASCII text, in an order that must survive."""
    pairs = [("k", "v1"), ("k", "v2"), ("ключ", "значение"), ("🚀", "火箭 ✓"), ("", ""), ("k", "v1")]
    return [(USER, pair) for pair in pairs]


def message_props(u: str) -> list[tuple[int, object]]:
    return [
        (int(PropertyId.PAYLOAD_FORMAT_INDICATOR), 0),
        (EXPIRY, 3600),
        (int(PropertyId.CONTENT_TYPE), "application/octet-stream; ünï=✓"),
        (int(PropertyId.RESPONSE_TOPIC), f"dev1/{u}/reply/ü"),
        (int(PropertyId.CORRELATION_DATA), ALL_BYTES),
        *user_props(),
    ]


def header_len(raw: bytes) -> int:
    i = 1
    while raw[i] & 0x80:
        i += 1
    return i + 1


def decode_raw(raw: bytes, version: int) -> Any:
    return codec.decode(raw[0], raw[header_len(raw) :], version)


class Tap(RawClient):
    """A RawClient that keeps the exact bytes of every packet it receives."""

    def __init__(self, port: int, version: int = 4, timeout: float = 5.0) -> None:
        super().__init__(port, version, timeout)
        self._raw: dict[int, tuple[Any, bytes]] = {}
        self.connack: Connack | None = None

    def recv(self, timeout: float = 5.0) -> Any:
        self.sock.settimeout(timeout)
        while not self.inbox:
            data = self.sock.recv(65536)
            if not data:
                raise Closed("connection closed by the server")
            buf, frames = self.framer.feed(data)
            for start, body, end in frames:
                packet = codec.decode(buf[start], buf[body:end], self.version)
                self._raw[id(packet)] = (packet, bytes(buf[start:end]))
                self.inbox.append(packet)
        return self.inbox.pop(0)

    def raw(self, packet: Any) -> bytes:
        return self._raw[id(packet)][1]

    def expect_raw(self, cls: type) -> tuple[Any, bytes]:
        packet = self.expect(cls)
        return packet, self.raw(packet)

    def subscribe_to(self, topic_filter: str, qos: int = 2, pid: int = 9) -> bytes:
        """Subscribe with retain-as-published and a subscription identifier (v5); returns the SUBACK bytes."""
        if self.version == 5:
            sub = Subscription(topic_filter, qos, retain_as_published=True)
            props: list[tuple[int, object]] = [(int(PropertyId.SUBSCRIPTION_IDENTIFIER), 42), *user_props()]
            self.send(Subscribe(pid, [sub], props))
        else:
            self.send(Subscribe(pid, [Subscription(topic_filter, qos)]))
        suback, raw = self.expect_raw(Suback)
        assert suback.reason_codes == [qos]
        return raw

    def take(self) -> tuple[Publish, bytes, bytes]:
        """The next PUBLISH, its bytes, and (QoS 2) the PUBREL bytes of the flow this client completes."""
        publish, raw = self.expect_raw(Publish)
        pubrel = b""
        if publish.qos == 1:
            self.send(Puback(publish.packet_id))
        elif publish.qos == 2:
            self.send(Pubrec(publish.packet_id))
            rel, pubrel = self.expect_raw(Pubrel)
            assert rel.packet_id == publish.packet_id
            self.send(Pubcomp(publish.packet_id))
        return publish, raw, pubrel

    def flow(self, packet: Publish) -> list[bytes]:
        """Send ``packet`` and complete its QoS flow; returns the bytes of the acknowledgements received."""
        self.send(packet)
        if packet.qos == 1:
            return [self.expect_raw(Puback)[1]]
        if packet.qos == 2:
            rec, rec_raw = self.expect_raw(Pubrec)
            self.send(Pubrel(rec.packet_id))
            return [rec_raw, self.expect_raw(Pubcomp)[1]]
        return []


def canon(raw: bytes, version: int) -> tuple[bytes, int | None]:
    """A delivered PUBLISH with packet id and Message Expiry Interval normalized, and the expiry."""
    p = decode_raw(raw, version)
    assert isinstance(p, Publish)
    assert codec.encode(p, version) == raw, "re-encoding must be exact for the comparison to be on bytes"
    expiry: int | None = None
    props: list[tuple[int, object]] = []
    for pid, value in p.properties:
        if pid == EXPIRY:
            assert isinstance(value, int)
            expiry, value = value, 0
        props.append((pid, value))
    p.properties = props
    if p.qos:
        p.packet_id = 1
    return codec.encode(p, version), expiry


def assert_same_delivery(a: bytes, b: bytes, version: int) -> None:
    """Equal bytes but for the packet id and a one-second countdown of the message expiry."""
    (ca, ea), (cb, eb) = canon(a, version), canon(b, version)
    assert ca == cb, f"\n{decode_raw(a, version)!r}\n!=\n{decode_raw(b, version)!r}"
    if ea is None or eb is None:
        assert ea == eb
    else:
        assert abs(ea - eb) <= 1


def mask_pid(raw: bytes) -> bytes:
    """An acknowledgement (PUBACK..PUBCOMP) with its packet id zeroed."""
    h = header_len(raw)
    return raw[:h] + b"\0\0" + raw[h + 2 :]


def connect(port: int, version: int, client_id: str, via_proxy: bool, **kw: Any) -> Tap:
    c = Tap(port, version)
    creds = {"username": "dev1", "password": "pw1"} if via_proxy else {}
    c.connack = c.connect(client_id, **creds, **kw)
    assert c.connack.reason_code == 0
    return c


@pytest.fixture
def ends(proxy: GatewayProcess, broker: Mosquitto) -> Callable[[int, str, bool], Tap]:
    """``ends(version, client_id, via_proxy)``: a connected client, straight to the broker or through the
    proxy as dev1."""

    def make(version: int, client_id: str, via_proxy: bool) -> Tap:
        return connect(proxy.port if via_proxy else broker.port, version, client_id, via_proxy)

    return make


QOS_VERSIONS = [pytest.param(v, q, id=f"v{v}-qos{q}") for v in (4, 5) for q in (0, 1, 2)]


@pytest.mark.parametrize(("version", "qos"), QOS_VERSIONS)
def test_uplink_publish_leaves_broker_as_if_sent_directly(
    ends: Callable[[int, str, bool], Tap], version: int, qos: int
) -> None:
    """The same PUBLISH sent directly and through the proxy: the same acknowledgement bytes come back and
    a direct subscriber receives the same bytes."""
    u = uid()
    topic = f"dev1/{u}/tëst/ü"
    watcher = ends(version, f"w-{u}", False)
    watcher.subscribe_to(f"dev1/{u}/#")
    props = message_props(u) if version == 5 else []
    packet = Publish(topic, ALL_BYTES * 4, qos=qos, packet_id=77 if qos else None, properties=props)
    deliveries = []
    flows = []
    for via_proxy in (False, True):
        sender = ends(version, f"s{int(via_proxy)}-{u}", via_proxy)
        flows.append(sender.flow(packet))
        deliveries.append(watcher.take())
        sender.disconnect()
    assert flows[0] == flows[1]
    assert len(flows[0]) == qos  # PUBACK, or PUBREC and PUBCOMP
    (_, a_raw, a_rel), (b, b_raw, b_rel) = deliveries
    assert (b.topic, b.payload, b.qos, b.retain) == (topic, ALL_BYTES * 4, qos, False)
    if version == 5:
        assert (int(PropertyId.SUBSCRIPTION_IDENTIFIER), 42) in b.properties
    assert_same_delivery(a_raw, b_raw, version)
    if qos == 2:
        assert mask_pid(a_rel) == mask_pid(b_rel)  # the broker's PUBREL, packet id aside
    else:
        assert a_rel == b_rel == b""
    watcher.disconnect()


@pytest.mark.parametrize(("version", "qos"), QOS_VERSIONS)
def test_downlink_publish_reaches_proxied_subscriber_as_it_reaches_a_direct_one(
    ends: Callable[[int, str, bool], Tap], version: int, qos: int
) -> None:
    """The same SUBSCRIBE (v5: with subscription identifier, options and user properties) directly and
    through the proxy: identical SUBACK bytes, then identical deliveries of one broker-side PUBLISH."""
    u = uid()
    direct = ends(version, f"d-{u}", False)
    proxied = ends(version, f"p-{u}", True)
    assert direct.subscribe_to(f"dev1/{u}/#") == proxied.subscribe_to(f"dev1/{u}/#")
    sender = ends(version, f"s-{u}", False)
    props = message_props(u) if version == 5 else []
    packet = Publish(f"dev1/{u}/ü", ALL_BYTES * 3, qos=qos, packet_id=5 if qos else None, properties=props)
    sender.flow(packet)
    _, d_raw, d_rel = direct.take()
    p, p_raw, p_rel = proxied.take()
    assert (p.topic, p.payload, p.qos) == (f"dev1/{u}/ü", ALL_BYTES * 3, qos)
    if version == 5:
        got_users = [v for k, v in p.properties if k == USER]
        assert got_users == [v for _, v in user_props()]
        assert (int(PropertyId.SUBSCRIPTION_IDENTIFIER), 42) in p.properties
    assert_same_delivery(d_raw, p_raw, version)
    if qos == 2:
        assert mask_pid(d_rel) == mask_pid(p_rel)  # the broker's PUBREL, packet id aside
    else:
        assert d_rel == p_rel == b""
    for c in (direct, proxied, sender):
        c.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_retained_message_identical_both_ways(ends: Callable[[int, str, bool], Tap], version: int) -> None:
    """A retained PUBLISH stored directly and then (same bytes) through the proxy is handed to new direct
    subscribers identically; a new subscriber through the proxy gets that same retained message."""
    u = uid()
    topic = f"dev1/{u}/state"
    props = message_props(u) if version == 5 else []
    packet = Publish(topic, ALL_BYTES, qos=1, retain=True, packet_id=3, properties=props)
    stored = []
    for via_proxy in (False, True):
        sender = ends(version, f"s{int(via_proxy)}-{u}", via_proxy)
        sender.flow(packet)
        sender.disconnect()
        fresh = ends(version, f"f{int(via_proxy)}-{u}", False)
        fresh.subscribe_to(f"dev1/{u}/#", qos=1)
        got, raw, _ = fresh.take()
        assert (got.topic, got.payload, got.retain) == (topic, ALL_BYTES, True)
        stored.append(raw)
        fresh.disconnect()
    assert_same_delivery(stored[0], stored[1], version)
    late = ends(version, f"late-{u}", True)
    late.subscribe_to(f"dev1/{u}/#", qos=1)
    got, raw, _ = late.take()
    assert got.retain is True
    assert_same_delivery(stored[0], raw, version)
    late.disconnect()
    clear = ends(version, f"c-{u}", False)
    clear.flow(Publish(topic, b"", qos=1, retain=True, packet_id=1))
    clear.disconnect()


def publish_of_size(topic: str, total: int, props: list[tuple[int, object]], version: int) -> Publish:
    """A QoS 1 PUBLISH whose encoding (fixed header included) is exactly ``total`` bytes (> 16 KiB)."""
    packet = Publish(topic, b"", qos=1, packet_id=60, properties=props)
    empty = codec.encode(packet, version)
    body_without_payload = len(empty) - header_len(empty)
    packet.payload = (ALL_BYTES * (total // 256 + 1))[: total - 4 - body_without_payload]  # 3-byte length
    assert len(codec.encode(packet, version)) == total
    return packet


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("size", [60 * 1024, 65536], ids=["60KiB", "exactly-max_packet_size"])
def test_large_payload_both_directions(
    ends: Callable[[int, str, bool], Tap], version: int, size: int
) -> None:
    """A PUBLISH of 60 KiB, and one of exactly the listener's max_packet_size (65536 bytes, fixed header
    included, so it needs more than one 64 KiB read), sent directly and through the proxy and received by
    a direct and a proxied subscriber: four identical deliveries."""
    u = uid()
    props = message_props(u) if version == 5 else []
    packet = publish_of_size(f"dev1/{u}/big", size, props, version)
    payload = packet.payload
    direct_sub = ends(version, f"ds-{u}", False)
    proxied_sub = ends(version, f"ps-{u}", True)
    direct_sub.subscribe_to(f"dev1/{u}/#", qos=1)
    proxied_sub.subscribe_to(f"dev1/{u}/#", qos=1)
    raws = []
    for via_proxy in (False, True):
        sender = ends(version, f"s{int(via_proxy)}-{u}", via_proxy)
        sender.flow(packet)
        sender.disconnect()
        for sub in (direct_sub, proxied_sub):
            got, raw, _ = sub.take()
            assert got.payload == payload
            raws.append(raw)
    for raw in raws[1:]:
        assert_same_delivery(raws[0], raw, version)
    direct_sub.disconnect()
    proxied_sub.disconnect()


def pipeline(u: str, version: int, n: int = 500) -> list[Publish]:
    """``n`` PUBLISHes of varied sizes (so packets straddle the proxy's 64 KiB reads), QoS 0 and 1."""
    props = [(USER, ("seq", "x"))] if version == 5 else []
    out = []
    for i in range(n):
        payload = i.to_bytes(2, "big") + bytes((i * 7 + k) % 256 for k in range(i * 37 % 700))
        qos = i % 2
        out.append(
            Publish(f"dev1/{u}/{i % 5}", payload, qos=qos, packet_id=i + 1 if qos else None, properties=props)
        )
    return out


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("with_connect", [False, True], ids=["after-connack", "with-connect"])
def test_500_pipelined_publishes_in_one_write(
    proxy: GatewayProcess, broker: Mosquitto, version: int, with_connect: bool
) -> None:
    """500 pre-encoded PUBLISHes in one sendall through the proxy (optionally in the same write as the
    CONNECT): every PUBACK comes back in order, and a direct and a proxied subscriber each receive all 500,
    in order, identically."""
    u = uid()
    packets = pipeline(u, version)
    direct_sub = connect(broker.port, version, f"ds-{u}", False)
    proxied_sub = connect(proxy.port, version, f"ps-{u}", True)
    direct_sub.subscribe_to(f"dev1/{u}/#", qos=0)
    proxied_sub.subscribe_to(f"dev1/{u}/#", qos=0)
    blob = b"".join(codec.encode(p, version) for p in packets)
    assert len(blob) > 2 * 65536
    sender = Tap(proxy.port, version)
    if with_connect:
        hello = Connect(f"s-{u}", protocol_level=version, username="dev1", password=b"pw1")
        sender.send_raw(codec.encode(hello, version) + blob)
        assert sender.expect(Connack).reason_code == 0
    else:
        assert sender.connect(f"s-{u}", "dev1", "pw1").reason_code == 0
        sender.send_raw(blob)
    acks = [sender.expect(Puback).packet_id for _ in range(250)]
    assert acks == [p.packet_id for p in packets if p.qos]
    got: dict[str, list[bytes]] = {}
    for name, sub in (("direct", direct_sub), ("proxied", proxied_sub)):
        received = [sub.expect_raw(Publish) for _ in packets]
        assert [(p.topic, p.payload) for p, _ in received] == [(p.topic, p.payload) for p in packets], name
        got[name] = [raw for _, raw in received]
    assert got["direct"] == got["proxied"]  # QoS 0 deliveries: no packet id, byte-identical
    for c in (sender, direct_sub, proxied_sub):
        c.disconnect()


@pytest.mark.parametrize(("version", "refused"), [(4, (0, 0x80)), (5, (0x87, 0x87))], ids=["v4", "v5"])
def test_answers_to_packets_pipelined_with_connect_come_after_connack(
    proxy: GatewayProcess, broker: Mosquitto, version: int, refused: tuple[int, int]
) -> None:
    """A client need not wait for CONNACK before sending more (MQTT 3.1.1 and 5, section 3.1.4). CONNECT, a
    PUBLISH dev1 may not make, a SUBSCRIBE it may not make and an allowed PUBLISH in one write: the proxy
    answers the refused two itself, but the first packet the client receives must still be the broker's
    CONNACK (MQTT-3.2.0-1), and then one answer per packet."""
    u = uid()
    watcher = connect(broker.port, version, f"w-{u}", False)
    watcher.subscribe_to(f"+/{u}/#", qos=1)
    hello = Connect(f"early-{u}", protocol_level=version, username="dev1", password=b"pw1")
    pipelined = [
        hello,
        Publish(f"other/{u}/x", b"no", qos=1, packet_id=1),
        Subscribe(2, [Subscription(f"secret/{u}/#", 1)]),
        Publish(f"dev1/{u}/x", b"yes", qos=1, packet_id=3),
    ]
    c = Tap(proxy.port, version)
    c.send_raw(b"".join(codec.encode(p, version) for p in pipelined))
    got = [c.recv() for _ in range(4)]
    assert isinstance(got[0], Connack), f"the first packet is not the CONNACK: {got}"
    assert got[0].reason_code == 0
    refused_pub, refused_sub = refused
    answers = {(type(p).__name__, p.packet_id): getattr(p, "reason_code", None) for p in got[1:]}
    assert answers == {("Puback", 1): refused_pub, ("Suback", 2): None, ("Puback", 3): 0}
    assert next(p for p in got if isinstance(p, Suback)).reason_codes == [refused_sub]
    seen = watcher.expect(Publish)
    assert (seen.topic, seen.payload) == (f"dev1/{u}/x", b"yes")
    c.disconnect()
    watcher.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_pipelined_publishes_with_refusals_keep_their_neighbours_intact(
    proxy: GatewayProcess, broker: Mosquitto, version: int
) -> None:
    """One write of 300 QoS 1 PUBLISHes, every 7th to a topic dev1 may not publish to: the proxy cuts those
    out of the chunk and answers them (0x87 on v5, a plain PUBACK on 3.1.1); every other one reaches the
    broker unchanged and in order, and each PUBLISH gets exactly one PUBACK."""
    u = uid()
    watcher = connect(broker.port, version, f"w-{u}", False)
    watcher.subscribe_to(f"+/{u}/#", qos=0)
    props = [(USER, ("k", "v")), (USER, ("k", "v"))] if version == 5 else []
    packets = [
        Publish(
            f"{'other' if i % 7 == 3 else 'dev1'}/{u}/{i}",
            bytes([i % 256]) * (i * 37 % 700),
            qos=1,
            packet_id=i + 1,
            properties=props,
        )
        for i in range(300)
    ]
    allowed = [p for p in packets if p.topic.startswith("dev1/")]
    sender = connect(proxy.port, version, f"s-{u}", True)
    sender.send_raw(b"".join(codec.encode(p, version) for p in packets))
    acks = {}
    for _ in packets:
        ack = sender.expect(Puback)
        assert ack.packet_id not in acks
        acks[ack.packet_id] = ack.reason_code
    refused_code = 0x87 if version == 5 else 0
    assert acks == {p.packet_id: 0 if p in allowed else refused_code for p in packets}
    # the direct twin of the stream, minus the refused packets, is what the broker delivers
    reference = connect(broker.port, version, f"r-{u}", False)
    reference.send_raw(b"".join(codec.encode(p, version) for p in allowed))
    for _ in allowed:
        reference.expect(Puback)
    via_proxy = [watcher.expect_raw(Publish) for _ in allowed]
    direct = [watcher.expect_raw(Publish) for _ in allowed]
    assert [(p.topic, p.payload) for p, _ in via_proxy] == [(p.topic, p.payload) for p in allowed]
    assert [raw for _, raw in via_proxy] == [raw for _, raw in direct]
    for c in (sender, reference, watcher):
        c.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_unfinished_qos_flows_resume_identically_after_reconnect(
    proxy: GatewayProcess, broker: Mosquitto, version: int
) -> None:
    """Persistent sessions, directly and through the proxy, each dropped (socket closed) in the middle of
    QoS flows: an inbound QoS 2 with PUBREC received but no PUBREL sent, an outbound QoS 1 not acknowledged
    and an outbound QoS 2 with PUBREC sent but no PUBREL received. After reconnecting, the broker resends the
    same things (CONNACK, the QoS 1 PUBLISH with DUP, the PUBREL) and completes the inbound flow the same way,
    byte for byte (packet identifiers aside)."""
    u = uid()
    session = [(int(PropertyId.SESSION_EXPIRY_INTERVAL), 300)] if version == 5 else []
    props = message_props(u) if version == 5 else []
    ports = {False: broker.port, True: proxy.port}
    watcher = connect(broker.port, version, f"w-{u}", False)
    watcher.subscribe_to(f"dev1/{u}/in/#", qos=2)
    transcripts = []
    for via_proxy in (False, True):
        cid = f"q{int(via_proxy)}-{u}"
        seen: list[bytes] = []
        c = connect(ports[via_proxy], version, cid, via_proxy, clean=False, properties=session)
        c.subscribe_to(f"dev1/{u}/out/#", qos=2)
        c.send(Publish(f"dev1/{u}/in/x", ALL_BYTES, qos=2, packet_id=7, properties=props))
        seen.append(c.expect_raw(Pubrec)[1])
        sender = connect(broker.port, version, f"s{int(via_proxy)}-{u}", False)
        sender.flow(Publish(f"dev1/{u}/out/one", b"1", qos=1, packet_id=1, properties=props))
        sender.flow(Publish(f"dev1/{u}/out/two", b"2", qos=2, packet_id=2, properties=props))
        sender.disconnect()
        one = c.expect(Publish)
        two = c.expect(Publish)
        assert (one.qos, one.dup, two.qos) == (1, False, 2)
        c.send(Pubrec(two.packet_id))  # and never PUBACK the first one
        c.close()  # no DISCONNECT
        broker.wait_dropped(cid)
        c = connect(ports[via_proxy], version, cid, via_proxy, clean=False, properties=session)
        assert c.connack is not None and c.connack.session_present is True
        seen.append(c.raw(c.connack))
        again, again_raw = c.expect_raw(Publish)
        assert (again.topic, again.payload, again.dup) == (one.topic, b"1", True)
        seen.append(canon(again_raw, version)[0])  # packet id and expiry normalized
        rel, rel_raw = c.expect_raw(Pubrel)
        assert rel.packet_id == two.packet_id
        seen.append(mask_pid(rel_raw))
        c.send(Puback(again.packet_id))
        c.send(Pubcomp(rel.packet_id))
        c.send(Pubrel(7))  # finish the inbound flow the first connection left open
        seen.append(c.expect_raw(Pubcomp)[1])
        got, raw, _ = watcher.take()
        assert (got.topic, got.payload) == (f"dev1/{u}/in/x", ALL_BYTES)
        seen.append(raw)
        c.disconnect()
        connect(ports[via_proxy], version, cid, via_proxy, clean=True).disconnect()  # end the session
        transcripts.append(seen)
    direct, proxied = transcripts
    assert direct[:5] == proxied[:5]
    assert_same_delivery(direct[5], proxied[5], version)
    watcher.disconnect()


def will_for(u: str, version: int) -> Will:
    props: list[tuple[int, object]] = []
    if version == 5:
        props = [(int(PropertyId.WILL_DELAY_INTERVAL), 0), *message_props(u)]
    return Will(f"dev1/{u}/will", ALL_BYTES, qos=2, retain=False, properties=props)


@pytest.mark.parametrize("version", [4, 5])
def test_will_with_properties_identical(proxy: GatewayProcess, broker: Mosquitto, version: int) -> None:
    """A client with a Will (v5: will properties) closes its socket without DISCONNECT, once connected
    directly and once through the proxy: the broker publishes the same Will."""
    u = uid()
    watcher = connect(broker.port, version, f"w-{u}", False)
    watcher.subscribe_to(f"dev1/{u}/#")
    wills = []
    for via_proxy in (False, True):
        port = proxy.port if via_proxy else broker.port
        dying = connect(port, version, f"dying{int(via_proxy)}-{u}", via_proxy, will=will_for(u, version))
        dying.close()
        got, raw, _ = watcher.take()
        assert (got.topic, got.payload, got.qos) == (f"dev1/{u}/will", ALL_BYTES, 2)
        wills.append(raw)
    assert_same_delivery(wills[0], wills[1], version)
    watcher.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_session_resumption_identical(proxy: GatewayProcess, broker: Mosquitto, version: int) -> None:
    """Persistent sessions made directly and through the proxy: on reconnection the CONNACK bytes
    (session present) are the same, and so are the messages the broker queued meanwhile."""
    u = uid()
    session = [(int(PropertyId.SESSION_EXPIRY_INTERVAL), 300)] if version == 5 else []
    ports = {False: broker.port, True: proxy.port}
    for via_proxy in (False, True):
        c = connect(
            ports[via_proxy], version, f"r{int(via_proxy)}-{u}", via_proxy, clean=False, properties=session
        )
        c.subscribe_to(f"dev1/{u}/#", qos=2)
        c.disconnect()
        broker.wait_dropped(f"r{int(via_proxy)}-{u}")
    sender = connect(broker.port, version, f"s-{u}", False)
    props = message_props(u) if version == 5 else []
    sender.flow(Publish(f"dev1/{u}/one", ALL_BYTES, qos=1, packet_id=1, properties=props))
    sender.flow(Publish(f"dev1/{u}/two", ALL_BYTES[::-1], qos=2, packet_id=2, properties=props))
    sender.disconnect()
    connacks = []
    queued = []
    for via_proxy in (False, True):
        c = connect(
            ports[via_proxy], version, f"r{int(via_proxy)}-{u}", via_proxy, clean=False, properties=session
        )
        assert c.connack is not None and c.connack.session_present is True
        connacks.append(c.raw(c.connack))
        queued.append([c.take()[1:] for _ in range(2)])
        c.disconnect()
        # end the session
        connect(ports[via_proxy], version, f"r{int(via_proxy)}-{u}", via_proxy, clean=True).disconnect()
    assert connacks[0] == connacks[1]
    for (a_raw, a_rel), (b_raw, b_rel) in zip(queued[0], queued[1], strict=True):
        assert_same_delivery(a_raw, b_raw, version)
        assert (a_rel == b"") == (b_rel == b"")  # a PUBREL in both flows (QoS 2) or in neither
        if a_rel:
            assert mask_pid(a_rel) == mask_pid(b_rel)
    assert [decode_raw(raw, version).topic for raw, _ in queued[1]] == [f"dev1/{u}/one", f"dev1/{u}/two"]


def test_v5_connect_properties_reach_broker(proxy: GatewayProcess, broker: Mosquitto) -> None:
    """The same v5 CONNECT (session expiry, receive maximum 1, topic alias maximum, user properties, no
    client id) directly and through the proxy: the same CONNACK but for the assigned client identifier,
    and the broker honours the receive maximum (then, on other connections, the maximum packet size) the
    client asked for."""
    u = uid()
    props: list[tuple[int, object]] = [
        (int(PropertyId.SESSION_EXPIRY_INTERVAL), 0),
        (int(PropertyId.RECEIVE_MAXIMUM), 1),
        (int(PropertyId.TOPIC_ALIAS_MAXIMUM), 0),
        (int(PropertyId.REQUEST_PROBLEM_INFORMATION), 1),
        *user_props(),
    ]
    clients = [
        connect(broker.port, 5, "", False, properties=props),
        connect(proxy.port, 5, "", True, properties=props),
    ]
    normalized = []
    assigned = []
    for c in clients:
        assert c.connack is not None
        raw = c.raw(c.connack)
        assert codec.encode(c.connack, 5) == raw
        ids = [v for k, v in c.connack.properties if k == ASSIGNED_ID]
        assert len(ids) == 1
        assigned.append(ids[0])
        c.connack.properties = [(k, "" if k == ASSIGNED_ID else v) for k, v in c.connack.properties]
        normalized.append(codec.encode(c.connack, 5))
    assert normalized[0] == normalized[1]
    assert assigned[0] != assigned[1]
    for c in clients:
        c.subscribe_to(f"dev1/{u}/rm/#", qos=1)
    sender = connect(broker.port, 5, f"s-{u}", False)
    for i in range(3):
        sender.flow(Publish(f"dev1/{u}/rm/small", bytes([i]), qos=1, packet_id=1 + i))
    for c in clients:
        for i in range(3):
            got = c.expect(Publish)
            assert (got.topic, got.payload) == (f"dev1/{u}/rm/small", bytes([i]))
            if i < 2:
                # receive maximum 1: the next one waits for this PUBACK (and comes right after it)
                assert c.drain(0.3) == []
            c.send(Puback(got.packet_id))
        c.disconnect()
    # Maximum Packet Size 2000: the broker never sends the 3000-byte message; the next one is the small one
    size = [(int(PropertyId.MAXIMUM_PACKET_SIZE), 2000)]
    clients = [
        connect(broker.port, 5, f"d-{u}", False, properties=size),
        connect(proxy.port, 5, f"p-{u}", True, properties=size),
    ]
    for c in clients:
        c.subscribe_to(f"dev1/{u}/mps/#", qos=1)
    sender.flow(Publish(f"dev1/{u}/mps/big", bytes(3000), qos=1, packet_id=10))
    sender.flow(Publish(f"dev1/{u}/mps/small", b"fits", qos=1, packet_id=11))
    for c in clients:
        got, _, _ = c.take()
        assert (got.topic, got.payload) == (f"dev1/{u}/mps/small", b"fits")
        c.disconnect()
    sender.disconnect()


FAKE_UPSTREAM_CONFIG = """
[metrics]
address = ""

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{upstream}"
max_packet_size = 65536

[auth]
handler = "static"

[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#", "public/#"]
"""


@pytest.fixture
def upstream() -> Iterator[socket.socket]:
    """A listening socket standing in for the broker."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    s.settimeout(10)
    yield s
    s.close()


def read_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """``n`` bytes, or fewer when the peer closes or stays silent for ``timeout``."""
    sock.settimeout(timeout)
    got = b""
    try:
        while len(got) < n:
            data = sock.recv(n - len(got))
            if not data:
                break
            got += data
    except TimeoutError:
        pass
    return got


def write(sock: socket.socket, packets: list[Any], version: int, dribble: bool) -> bytes:
    data = b"".join(codec.encode(p, version) for p in packets)
    if dribble:
        for i in range(0, len(data), 7):
            sock.sendall(data[i : i + 7])
            gevent.sleep(0.001)
    else:
        sock.sendall(data)
    return data


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("dribble", [False, True], ids=["one-write", "7-byte-writes"])
def test_every_byte_forwarded_to_and_from_upstream(
    gateway_factory: Callable[..., GatewayProcess], upstream: socket.socket, version: int, dribble: bool
) -> None:
    """Against a fake broker: the CONNECT (will, will properties, connect properties, credentials), PUBLISH
    with topic aliases, SUBSCRIBE with options and identifiers, UNSUBSCRIBE, pings, the QoS 2 flows and
    DISCONNECT arrive exactly as the device wrote them, and everything the broker writes (CONNACK
    properties, acknowledgements with reason codes, PUBLISH with server topic aliases, dup and retain)
    reaches the device exactly."""
    gw = gateway_factory(FAKE_UPSTREAM_CONFIG, fills={"upstream": upstream.getsockname()[1]})
    u = uid()
    v5 = version == 5

    def props(*items: tuple[int, object]) -> list[tuple[int, object]]:
        return list(items) if v5 else []

    users = user_props()
    alias = int(PropertyId.TOPIC_ALIAS)
    sub_id = int(PropertyId.SUBSCRIPTION_IDENTIFIER)
    reason = int(PropertyId.REASON_STRING)
    hello = Connect(
        f"fake-{u}",
        protocol_level=version,
        clean_start=False,
        keepalive=33,
        username="dev1",
        password=b"pw1",
        will=Will(
            f"dev1/{u}/will",
            ALL_BYTES,
            qos=1,
            retain=True,
            properties=props((int(PropertyId.WILL_DELAY_INTERVAL), 5), *message_props(u)),
        ),
        properties=props(
            (int(PropertyId.SESSION_EXPIRY_INTERVAL), 120),
            (int(PropertyId.RECEIVE_MAXIMUM), 7),
            (int(PropertyId.MAXIMUM_PACKET_SIZE), 65536),
            (int(PropertyId.TOPIC_ALIAS_MAXIMUM), 10),
            (int(PropertyId.REQUEST_PROBLEM_INFORMATION), 0),
            (int(PropertyId.REQUEST_RESPONSE_INFORMATION), 1),
            *users,
        ),
    )
    device = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    rounds_up = [
        [
            hello,
            Publish(
                f"dev1/{u}/a", ALL_BYTES, qos=1, packet_id=1, properties=props((alias, 3), *message_props(u))
            ),
            Publish(
                "" if v5 else f"dev1/{u}/a", b"by alias", qos=2, packet_id=2, properties=props((alias, 3))
            ),
            Publish(f"dev1/{u}/r", b"", qos=0, retain=True),
            Subscribe(
                3,
                [
                    Subscription(
                        f"dev1/{u}/#", 2, no_local=v5, retain_as_published=v5, retain_handling=2 * v5
                    ),
                    Subscription(f"public/{u}", 1),
                ],
                props((sub_id, 268_435_455), *users),
            ),
            Unsubscribe(4, [f"public/{u}"], props(*users)),
            Pingreq(),
        ],
        [Pubrel(2, 0, props(*users)), Pubrec(10, 0, props(*users)), Puback(11, 0, props((reason, "ok ✓")))],
        [
            Pubcomp(10, 0, props(*users)),
            Disconnect(4 * v5, props((int(PropertyId.SESSION_EXPIRY_INTERVAL), 0))),
        ],
    ]
    rounds_down = [
        [
            Connack(
                True,
                0,
                props(
                    (int(PropertyId.RECEIVE_MAXIMUM), 5),
                    (int(PropertyId.TOPIC_ALIAS_MAXIMUM), 4),
                    (reason, "welcome ü"),
                    *users,
                ),
            ),
            Puback(1, 0x10 * v5, props((reason, "nobody listens"), *users)),
            Pubrec(2, 0, props(*users)),
            Suback(3, [2, 1], props(*users)),
            Unsuback(4, [0x11] if v5 else [], props(*users)),
            Pingresp(),
            Publish(
                f"dev1/{u}/x",
                ALL_BYTES,
                qos=2,
                retain=True,
                dup=True,
                packet_id=10,
                properties=props((alias, 1), (sub_id, 268_435_455), *message_props(u)),
            ),
            Publish("" if v5 else f"dev1/{u}/x", b"again", qos=1, packet_id=11, properties=props((alias, 1))),
            Publish(f"public/{u}", ALL_BYTES[::-1], qos=0),
        ],
        [Pubcomp(2, 0, props(*users)), Pubrel(10, 0, props(*users))],
    ]
    sent = write(device, rounds_up[0], version, dribble)
    broker_side, _ = upstream.accept()
    assert read_exactly(broker_side, len(sent)) == sent
    for up, down in zip(rounds_up[1:], rounds_down, strict=True):
        sent = write(broker_side, down, version, dribble)
        assert read_exactly(device, len(sent)) == sent
        sent = write(device, up, version, dribble)
        assert read_exactly(broker_side, len(sent)) == sent
    device.close()
    # nothing else came, and the proxy closed the broker side once the device had gone
    broker_side.settimeout(5)
    assert broker_side.recv(1) == b""
    broker_side.close()
