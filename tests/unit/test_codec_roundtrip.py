"""Round trips: decode(encode(p)) == p and re-encoding is byte identical, on MQTT 3.1.1 and 5; the Framer
cuts any chunking of a packet stream back into the same packets."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferryman.protocols.mqtt import (
    Auth,
    Connect,
    Disconnect,
    Framer,
    Packet,
    Puback,
    Publish,
    decode,
    encode,
    publish_fields,
)
from ferryman.protocols.mqtt.constants import PropertyId
from tests.unit.test_codec_strategies import packets, publishes, split

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


@pytest.mark.parametrize("version", VERSIONS)
@SETTINGS
@given(data=st.data())
def test_roundtrip(version: int, data: st.DataObject) -> None:
    packet = data.draw(packets(version == 5))
    raw = encode(packet, version)
    first, body = split(raw)
    decoded = decode(first, body, version)
    assert decoded == packet
    assert encode(decoded, version) == raw
    # decode accepts a memoryview body too
    assert decode(first, memoryview(body), version) == packet


@pytest.mark.parametrize("version", VERSIONS)
@SETTINGS
@given(data=st.data())
def test_publish_fields_agrees_with_decode(version: int, data: st.DataObject) -> None:
    packet = data.draw(publishes(version == 5))
    buf, frames = Framer().feed(encode(packet, version))
    (start, body, end) = frames[0]
    alias = next((v for pid, v in packet.properties if pid == PropertyId.TOPIC_ALIAS), None)
    topic, got_alias, payload_at, packet_id = publish_fields(buf, body, end, buf[start], version)
    assert (topic, got_alias, packet_id) == (packet.topic, alias, packet.packet_id or 0)
    assert buf[payload_at:end] == packet.payload
    # and with the packet somewhere inside a larger buffer
    prefix = data.draw(st.binary(max_size=3))
    shifted = prefix + buf + data.draw(st.binary(max_size=3))
    fields = publish_fields(shifted, body + len(prefix), end + len(prefix), buf[start], version)
    assert fields == (topic, alias, payload_at + len(prefix), packet_id)


@pytest.mark.parametrize("version", VERSIONS)
@SETTINGS
@given(data=st.data())
def test_framer_reassembles_any_chunking(version: int, data: st.DataObject) -> None:
    stream = data.draw(st.lists(packets(version == 5), min_size=1, max_size=6))
    raw = b"".join(encode(p, version) for p in stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    framer = Framer()
    out: list[Packet] = []
    replay = b""
    for chunk in chunks:
        buf, frames = framer.feed(chunk)
        for start, body, end in frames:
            out.append(decode(buf[start], buf[body:end], version))
        if frames:
            replay += buf[: frames[-1][2]]
    assert out == stream
    assert replay == raw
    assert framer.buffered == 0


def test_v5_short_forms_are_used() -> None:
    assert encode(Puback(7), 5) == b"\x40\x02\x00\x07"
    assert encode(Puback(7, 0x10), 5) == b"\x40\x03\x00\x07\x10"
    assert (
        encode(Puback(7, 0, [(PropertyId.REASON_STRING, "x")]), 5) == b"\x40\x08\x00\x07\x00\x04\x1f\x00\x01x"
    )
    assert encode(Disconnect(), 5) == b"\xe0\x00"
    assert encode(Disconnect(4), 5) == b"\xe0\x01\x04"
    assert encode(Auth(), 5) == b"\xf0\x00"
    # AUTH may omit the reason code and property length together only (MQTT 5 3.15.2.1)
    assert encode(Auth(0x18), 5) == b"\xf0\x02\x18\x00"


def test_v3_drops_what_it_cannot_carry() -> None:
    assert encode(Puback(7, 0x10, [(PropertyId.REASON_STRING, "x")]), 4) == b"\x40\x02\x00\x07"
    assert encode(Disconnect(0x8E, [(PropertyId.REASON_STRING, "x")]), 4) == b"\xe0\x00"
    p = Publish("t", b"x", properties=[(PropertyId.CONTENT_TYPE, "a")])
    assert encode(p, 4) == b"\x30\x04\x00\x01tx"
    assert (
        encode(Connect("c", 3, "MQIsdp", keepalive=10), 5)
        == b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x0a\x00\x01c"
    )


def test_encode_rejects_what_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode(Publish("t", qos=1), 5)  # no packet id
    with pytest.raises(ValueError):
        encode(Publish("\ud800"), 5)  # surrogate
    with pytest.raises(ValueError):
        encode(Publish("a\x00b"), 5)
    with pytest.raises(ValueError):
        encode(Publish("x" * 65536), 4)
    with pytest.raises(ValueError):
        encode(Auth(), 4)


def test_decoded_properties_are_independent_lists() -> None:
    raw = encode(Publish("t", b"x"), 4)
    first, body = split(raw)
    a = decode(first, body, 4)
    b = decode(first, body, 4)
    assert isinstance(a, Publish) and isinstance(b, Publish)
    a.properties.append((PropertyId.CONTENT_TYPE, "x"))
    assert b.properties == []


def test_changed_bytes_only_when_the_packet_really_changed() -> None:
    from ferryman.protocols.mqtt.codec import changed_bytes
    from ferryman.protocols.mqtt.packets import Puback, Publish

    raw = encode(Publish("a/b", b"x", qos=1, packet_id=7), 4)
    assert changed_bytes(raw, Publish("a/b", b"x", qos=1, packet_id=7), 4) is None
    assert changed_bytes(raw, Publish("c/d", b"x", qos=1, packet_id=7), 4) == encode(
        Publish("c/d", b"x", qos=1, packet_id=7), 4
    )
    long_form = b"\x40\x04\x00\x07\x00\x00"  # a v5 PUBACK with reason and property length spelled out
    assert changed_bytes(long_form, Puback(7), 5) is None  # equal packet: the sender's bytes are kept
    assert changed_bytes(long_form, Puback(7, 0x10), 5) == encode(Puback(7, 0x10), 5)
