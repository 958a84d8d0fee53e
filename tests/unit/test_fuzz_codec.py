"""Fuzzing: the codec and a live listener fed malformed and adversarial byte streams.

Codec level: arbitrary bytes and mutations of valid packets (bit flips, truncation, insertion, forged
remaining lengths, property id / duplicate / UTF-8 corruption) go through ``Framer.feed``, ``decode`` and
``publish_fields`` for MQTT 3.1.1 and 5. The only exceptions allowed are ``MqttError`` subclasses, each
with a reason code the proxy can send (DISCONNECT, or CONNACK for a CONNECT); whatever decodes re-encodes
and decodes to the same packet; ``publish_fields`` agrees with ``decode``; framing does not depend on how
the stream is cut.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferryman.protocols.mqtt.constants import (
    PropertyId,
)
from ferryman.protocols.mqtt.errors import (
    MalformedPacket,
    MqttError,
    PacketTooLarge,
    ProtocolError,
    TopicFilterInvalid,
    TopicNameInvalid,
)
from ferryman.protocols.mqtt.framing import MAX_REMAINING_LENGTH, Framer
from tests.fuzz_codec import (
    BAD_LENGTH_ENCODINGS,
    BAD_UTF8,
    FORGED_LENGTHS,
    MALFORMED,
    PACKET_TOO_LARGE,
    PROTOCOL_ERROR,
    TOPIC_ALIAS_INVALID,
    TOPIC_NAME_INVALID,
    UNKNOWN_IDS,
    connect_raw,
    encode_packet,
    fix_length,
    mstr,
    mutate,
    p_byte,
    p_pair,
    p_str,
    p_u16,
    p_u32,
    pblock,
    pkt,
    random_packet,
    run_codec,
    subscribe_raw,
    varint,
)
from tests.unit.test_codec_strategies import packets

# ====================================================================================== codec tests

VERSIONS = st.sampled_from((3, 4, 5))
CI_EXAMPLES = 1500
CODEC_SETTINGS = settings(
    max_examples=CI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@CODEC_SETTINGS
@given(data=st.binary(max_size=300), version=VERSIONS, cuts=st.lists(st.integers(0, 300), max_size=6))
def test_codec_arbitrary_bytes(data: bytes, version: int, cuts: list[int]) -> None:
    run_codec(data, version, cuts)


@CODEC_SETTINGS
@given(
    data=st.binary(min_size=1, max_size=120).map(
        lambda b: bytes((b[0] & 0xF0 | (b[0] & 0x0F and 0x02),)) + b[1:]
    ),
    version=VERSIONS,
)
def test_codec_arbitrary_bodies_with_a_consistent_length(data: bytes, version: int) -> None:
    """Random bodies behind a correct fixed header reach every decoder instead of stopping at framing."""
    run_codec(fix_length(data[:1] + varint(len(data) - 1) + data[1:]), version)


@st.composite
def _valid_streams(draw: st.DrawFn) -> tuple[bytes, int]:
    version = draw(st.sampled_from((4, 5)))
    ps = draw(st.lists(packets(version == 5), min_size=1, max_size=3))
    return b"".join(encode_packet(p, version) for p in ps), version


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=_valid_streams(),
    rnd=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 400), max_size=4),
)
def test_codec_mutated_valid_packets(stream: tuple[bytes, int], rnd: random.Random, cuts: list[int]) -> None:
    data, version = stream
    out = run_codec(data, version)  # the unmutated stream decodes in full
    assert not out.errors and out.packets >= 1, out
    run_codec(mutate(rnd, data), version, cuts)
    run_codec(mutate(rnd, data), 5 if version == 4 else 4)  # read with the other version too


@settings(max_examples=3000, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), version=st.sampled_from((4, 5)))
def test_codec_mutated_random_packets(seed: int, version: int) -> None:
    """The benchmark's own generator and mutator (``random.Random``), a slice of the benchmark in CI."""
    rnd = random.Random(seed)
    data = b"".join(encode_packet(random_packet(rnd, version), version) for _ in range(rnd.randrange(1, 4)))
    assert not run_codec(data, version).errors
    run_codec(mutate(rnd, data, max_ops=4), version, [rnd.randrange(0, len(data) + 1)])


# --------------------------------------------------------------------------- targeted defects, exact answers
# One defect per packet, at a place the decoder must reach; the answer is the one the spec gives.

_STR_IDS = (PropertyId.CONTENT_TYPE, PropertyId.RESPONSE_TOPIC)


@st.composite
def _publish_props(draw: st.DrawFn) -> list[bytes]:
    """Valid raw PUBLISH properties (no topic alias), each one item."""
    items = []
    for kind in draw(st.lists(st.sampled_from(("pfi", "mei", "ct", "up", "cd")), max_size=4, unique=True)):
        if kind == "pfi":
            items.append(p_byte(PropertyId.PAYLOAD_FORMAT_INDICATOR, draw(st.integers(0, 1))))
        elif kind == "mei":
            items.append(p_u32(PropertyId.MESSAGE_EXPIRY_INTERVAL, draw(st.integers(0, 2**32 - 1))))
        elif kind == "ct":
            items.append(
                p_str(PropertyId.CONTENT_TYPE, draw(st.text(max_size=5).filter(lambda s: "\x00" not in s)))
            )
        elif kind == "up":
            items.append(p_pair("k", "v"))
        else:
            items.append(bytes((PropertyId.CORRELATION_DATA,)) + mstr(draw(st.binary(max_size=5))))
    return items


# defect -> (exception class, reason code)
PUBLISH_DEFECTS: dict[str, tuple[type[MqttError], int]] = {
    "unknown-property-id": (MalformedPacket, MALFORMED),
    "property-not-for-publish": (MalformedPacket, MALFORMED),
    "duplicate-property": (ProtocolError, PROTOCOL_ERROR),
    "duplicate-topic-alias": (ProtocolError, PROTOCOL_ERROR),
    "bad-utf8-in-property": (MalformedPacket, MALFORMED),
    "bad-utf8-in-user-property": (MalformedPacket, MALFORMED),
    "bad-utf8-topic": (MalformedPacket, MALFORMED),
    "nul-in-topic": (MalformedPacket, MALFORMED),
    "wildcard-topic": (TopicNameInvalid, TOPIC_NAME_INVALID),
    "topic-alias-0": (ProtocolError, TOPIC_ALIAS_INVALID),
    "payload-format-2": (ProtocolError, PROTOCOL_ERROR),
    "property-length-overrun": (MalformedPacket, MALFORMED),
    "property-value-truncated": (MalformedPacket, MALFORMED),
    "empty-topic-no-alias": (ProtocolError, PROTOCOL_ERROR),
    "qos1-packet-id-0": (ProtocolError, PROTOCOL_ERROR),
    "qos3": (MalformedPacket, MALFORMED),
    "dup-with-qos0": (MalformedPacket, MALFORMED),
}


@settings(max_examples=600, deadline=None)
@given(
    defect=st.sampled_from(sorted(PUBLISH_DEFECTS)),
    items=_publish_props(),
    at=st.integers(0, 8),
    bad=st.sampled_from(BAD_UTF8),
    unknown=st.sampled_from(UNKNOWN_IDS),
    qos=st.integers(0, 2),
)
def test_publish_defects_get_the_spec_reason_code(
    defect: str, items: list[bytes], at: int, bad: bytes, unknown: int, qos: int
) -> None:
    at = min(at, len(items))
    topic: bytes = b"dev1/t"
    pid = 7
    flags = 0
    insert: bytes | None = None
    tail = b""
    if defect == "unknown-property-id":
        insert = bytes((unknown, 0, 0, 0, 0))
    elif defect == "property-not-for-publish":
        insert = p_u32(PropertyId.SESSION_EXPIRY_INTERVAL, 5)
    elif defect == "duplicate-property":
        items = [p_byte(PropertyId.PAYLOAD_FORMAT_INDICATOR, 0), *items]
        items = [i for n, i in enumerate(items) if n == 0 or i[0] != PropertyId.PAYLOAD_FORMAT_INDICATOR]
        insert = p_byte(PropertyId.PAYLOAD_FORMAT_INDICATOR, 1)
        at = max(at, 1)
    elif defect == "duplicate-topic-alias":
        items = [p_u16(PropertyId.TOPIC_ALIAS, 3), *items]
        insert = p_u16(PropertyId.TOPIC_ALIAS, 4)
        at = max(at, 1)
    elif defect == "bad-utf8-in-property":
        insert = p_str(PropertyId.CONTENT_TYPE, b"ok" + bad)
        items = [i for i in items if i[0] != PropertyId.CONTENT_TYPE]
    elif defect == "bad-utf8-in-user-property":
        insert = p_pair("k", b"v" + bad)
    elif defect == "bad-utf8-topic":
        topic = b"dev1/" + bad
    elif defect == "nul-in-topic":
        topic = b"dev1/\x00"
    elif defect == "wildcard-topic":
        topic = b"dev1/+/x" if at % 2 else b"dev1/#"
    elif defect == "topic-alias-0":
        insert = p_u16(PropertyId.TOPIC_ALIAS, 0)
    elif defect == "payload-format-2":
        items = [i for i in items if i[0] != PropertyId.PAYLOAD_FORMAT_INDICATOR]
        insert = p_byte(PropertyId.PAYLOAD_FORMAT_INDICATOR, 2 + at)
    elif defect == "property-value-truncated":
        items = []
        tail = bytes((PropertyId.MESSAGE_EXPIRY_INTERVAL,)) + b"\x00\x01"  # 4-byte value cut at 2
    elif defect == "empty-topic-no-alias":
        topic = b""
    elif defect == "qos1-packet-id-0":
        qos, pid = max(qos, 1), 0
    elif defect == "qos3":
        qos = 3
    elif defect == "dup-with-qos0":
        qos, flags = 0, 0x08
    if insert is not None:
        items = [*items[:at], insert, *items[at:]]
    block = b"".join(items) + tail
    props = varint(len(block)) + block
    if defect == "property-length-overrun":
        props = varint(len(block) + 40) + block
    raw = pkt(
        0x30 | (qos << 1) | flags, mstr(topic) + (pid.to_bytes(2, "big") if qos else b"") + props + b"pay"
    )
    cls, code = PUBLISH_DEFECTS[defect]
    out = run_codec(raw, 5)
    assert out.errors == {f"{cls.__name__} 0x{code:02X}": 1}, (defect, raw.hex(), out)


CONNECT_DEFECTS: dict[str, tuple[bytes, int, type[MqttError], int]] = {
    # name: (raw packet, version, exception class, reason code)
    "unknown-property-id": (connect_raw(5, "c", props=pblock(b"\x07\x00")), 5, MalformedPacket, MALFORMED),
    "duplicate-session-expiry": (
        connect_raw(5, "c", props=pblock(p_u32(0x11, 1), p_u32(0x11, 2))),
        5,
        ProtocolError,
        PROTOCOL_ERROR,
    ),
    "receive-maximum-0": (
        connect_raw(5, "c", props=pblock(p_u16(0x21, 0))),
        5,
        ProtocolError,
        PROTOCOL_ERROR,
    ),
    "maximum-packet-size-0": (
        connect_raw(5, "c", props=pblock(p_u32(0x27, 0))),
        5,
        ProtocolError,
        PROTOCOL_ERROR,
    ),
    "bad-utf8-client-id-v5": (connect_raw(5, b"c\xc3\x28"), 5, MalformedPacket, MALFORMED),
    "bad-utf8-client-id-v3": (connect_raw(4, b"c\xed\xa0\x80"), 4, MalformedPacket, MALFORMED),
    "bad-utf8-username": (connect_raw(5, "c", username=b"\xff"), 5, MalformedPacket, MALFORMED),
    "reserved-flag": (
        pkt(0x10, mstr(b"MQTT") + b"\x04\x03\x00\x3c" + mstr("c")),
        4,
        MalformedPacket,
        MALFORMED,
    ),
    # 3.1.1 (MQTT-3.1.3-8): the server answers CONNACK 0x02, "identifier rejected"; 0x85 is its MQTT 5 name.
    "empty-client-id-no-clean-session-v3": (connect_raw(4, "", clean=False), 4, ProtocolError, 0x85),
}


@pytest.mark.parametrize("name", sorted(CONNECT_DEFECTS))
def test_connect_defects_get_the_spec_reason_code(name: str) -> None:
    raw, version, cls, code = CONNECT_DEFECTS[name]
    out = run_codec(raw, version)
    assert out.errors == {f"{cls.__name__} 0x{code:02X}": 1}, out


SUBSCRIBE_DEFECTS: dict[str, tuple[bytes, type[MqttError], int]] = {
    "reserved-option-bits": (subscribe_raw(1, [("a", 0x40)], b"\x00"), MalformedPacket, MALFORMED),
    "retain-handling-3": (subscribe_raw(1, [("a", 0x30)], b"\x00"), ProtocolError, PROTOCOL_ERROR),
    "qos-3": (subscribe_raw(1, [("a", 0x03)], b"\x00"), ProtocolError, PROTOCOL_ERROR),
    "bad-utf8-filter": (subscribe_raw(1, [(b"a\xc0\xaf", 0)], b"\x00"), MalformedPacket, MALFORMED),
    "invalid-filter": (subscribe_raw(1, [("a/#/b", 0)], b"\x00"), TopicFilterInvalid, 0x8F),
    "no-local-on-shared": (subscribe_raw(1, [("$share/g/a", 0x04)], b"\x00"), ProtocolError, PROTOCOL_ERROR),
    "no-filters": (pkt(0x82, b"\x00\x01\x00"), ProtocolError, PROTOCOL_ERROR),
    "unknown-property": (subscribe_raw(1, [("a", 0)], pblock(b"\x01\x00")), MalformedPacket, MALFORMED),
    "subscription-id-0": (subscribe_raw(1, [("a", 0)], pblock(b"\x0b\x00")), ProtocolError, PROTOCOL_ERROR),
    "packet-id-0": (subscribe_raw(0, [("a", 0)], b"\x00"), ProtocolError, PROTOCOL_ERROR),
}


@pytest.mark.parametrize("name", sorted(SUBSCRIBE_DEFECTS))
def test_subscribe_defects_get_the_spec_reason_code(name: str) -> None:
    raw, cls, code = SUBSCRIBE_DEFECTS[name]
    out = run_codec(raw, 5)
    assert out.errors == {f"{cls.__name__} 0x{code:02X}": 1}, out


@settings(max_examples=300, deadline=None)
@given(
    length=st.sampled_from(FORGED_LENGTHS).flatmap(
        lambda n: st.integers(max(0, n - 2), min(MAX_REMAINING_LENGTH, n))
    ),
    limit=st.sampled_from((128, 65_536, 1_048_576, MAX_REMAINING_LENGTH + 5)),
    first=st.sampled_from((0x10, 0x30, 0x82, 0xC0)),
    got=st.integers(0, 600),
)
def test_forged_remaining_length(length: int, limit: int, first: int, got: int) -> None:
    """A header announcing up to 268,435,455 bytes: refused at once (0x95) when beyond the maximum packet
    size, else buffered and waited for (never a frame before the body is there, never an exception)."""
    header = bytes((first,)) + varint(length)
    data = header + bytes(min(got, length))
    framer = Framer(limit)
    if len(header) + length > limit:
        with pytest.raises(PacketTooLarge) as info:
            framer.feed(data)
        assert info.value.reason_code == PACKET_TOO_LARGE
        return
    _, frames = framer.feed(data)
    complete = got >= length
    assert len(frames) == (1 if complete else 0)
    assert framer.buffered == (0 if complete else len(data))


def test_framer_feed_is_not_quadratic_in_the_pending_packet() -> None:
    """A client that trickles a large packet a byte per segment must not cost the gateway a copy of everything
    buffered so far per segment (``self._pending + data``): with the default max_packet_size of 1 MiB, one
    such client at ~5,000 segments/s kept 0.44 of the gateway's core busy (bench/README.md, fuzz.py).
    Counted, not timed: the bytes the framer copies stay within a small multiple of the bytes fed."""
    size = 4 << 20
    framer = Framer(size + 16)
    header = b"\x30" + varint(size)
    fed = len(header) + size // 2
    framer.feed(header + bytes(size // 2))
    for _ in range(1000):
        framer.feed(b"x")
        fed += 1
    assert framer.buffered == fed
    assert framer.copied <= 2 * fed, f"{framer.copied} bytes copied for {fed} fed"
    # and the packet still comes out whole once the rest arrives
    rest = size - size // 2 - 1000
    _, frames = framer.feed(bytes(rest))
    assert len(frames) == 1 and frames[0][2] - frames[0][1] == size
    assert framer.buffered == 0


@pytest.mark.parametrize("encoding", BAD_LENGTH_ENCODINGS, ids=lambda b: b.hex())
def test_malformed_remaining_length_encodings(encoding: bytes) -> None:
    """Non-minimal encodings and a fifth length byte are a Malformed Packet (MQTT 1.5.5, 2.2.3)."""
    with pytest.raises(MalformedPacket):
        Framer().feed(b"\x30" + encoding + bytes(200))
