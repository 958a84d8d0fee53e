"""The run fast paths (protocols/mqtt/runs.py) against the packet-by-packet results, on random streams:
runs of one shape mixed with odd frames and packets, cut at random places.

Each property fails if a run is taken for more (or other) packets than it holds, if a payload is unmasked
with the wrong key, or if a topic check accepts a run with a packet the per-packet check would not pass.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ferryman.protocols.mqtt import codec, runs
from ferryman.protocols.mqtt.dataplane import _known_topic
from ferryman.protocols.mqtt.framing import Framer
from ferryman.protocols.mqtt.packets import Publish
from ferryman.protocols.websocket.frames import OP_PING, FrameDecoder, encode_frame

SETTINGS = settings(max_examples=60, deadline=None)


# ----------------------------------------------------------------------------------------- WebSocket frames


def frame(payload: bytes, masked: bool, key: bytes) -> bytes:
    """A final binary frame built here, independent of frames.encode_frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, (0x80 if masked else 0) | n))
    else:
        head = bytes((0x82, (0x80 if masked else 0) | 126)) + struct.pack("!H", n)
    if not masked:
        return head + payload
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[bool, list[bytes], list[bytes], list[int]]:
    """(masked, wire pieces, the payloads in order, cut points). Groups are runs of one length (each frame
    with its own key and payload), lone frames of any length, and pings."""
    masked = draw(st.booleans())
    wire: list[bytes] = []
    payloads: list[bytes] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["run", "run", "lone", "ping"]))
        if kind == "ping":
            wire.append(encode_frame(OP_PING, b"hi", mask=masked))
            continue
        length = draw(st.sampled_from([0, 1, 3, 4, 44, 125, 126, 300]))
        count = draw(st.integers(runs.RUN_MIN - 2, 3 * runs.RUN_MIN)) if kind == "run" else 1
        for _ in range(count):
            payload = os.urandom(length)
            wire.append(frame(payload, masked, os.urandom(4)))
            payloads.append(payload)
    total = sum(map(len, wire))
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=4)))
    return masked, wire, payloads, cuts


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@SETTINGS
@given(frame_streams())
def test_frame_decoder_with_runs_gives_every_payload_unmasked_in_order(
    stream: tuple[bool, list[bytes], list[bytes], list[int]],
) -> None:
    masked, wire, payloads, cuts = stream
    decoder = FrameDecoder(masked=masked)
    out = b"".join(decoder.feed(p) for p in pieces(b"".join(wire), cuts))
    assert out == b"".join(payloads)
    assert [op for op, _ in decoder.control] == [OP_PING] * sum(1 for w in wire if w[0] == 0x89)


def test_a_run_is_taken_whole_in_one_feed() -> None:
    """The fast path really runs: a read of identical-shape frames comes back in one piece."""
    payloads = [os.urandom(44) for _ in range(4 * runs.RUN_MIN)]
    data = b"".join(frame(p, True, os.urandom(4)) for p in payloads)
    assert runs.run_length(data, 0, len(data), 50, 2) == 4 * runs.RUN_MIN
    assert FrameDecoder(masked=True).feed(data) == b"".join(payloads)


def test_run_length_stops_at_the_first_record_of_another_shape() -> None:
    good = frame(b"x" * 44, False, b"")
    data = good * 20 + frame(b"y" * 43, False, b"") + good * 20
    assert runs.run_length(data, 0, len(data), len(good), 2) == 20
    assert runs.run_length(data, 0, len(good) * 10, len(good), 2) == 0  # fewer than RUN_MIN whole records


@given(st.binary(max_size=600), st.binary(min_size=4, max_size=4))
def test_unmask_is_xor_with_the_repeated_key(data: bytes, key: bytes) -> None:
    assert runs.unmask(data, key) == bytes(b ^ key[i & 3] for i, b in enumerate(data))


# ----------------------------------------------------------------------------------------- MQTT framing


@st.composite
def packet_streams(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    """MQTT packets: runs of one fixed header (same type, flags and length, different bodies) between
    lone packets of other shapes."""
    packets: list[bytes] = []
    for _ in range(draw(st.integers(1, 5))):
        size = draw(st.sampled_from([0, 2, 44, 127, 128, 300]))
        first = draw(st.sampled_from([0x30, 0x32, 0x40, 0xC0])) if size else 0xC0
        count = draw(st.integers(1, 3 * runs.RUN_MIN))
        for _ in range(count):
            packets.append(bytes((first,)) + _remaining(size) + os.urandom(size))
    total = sum(map(len, packets))
    return packets, sorted(draw(st.lists(st.integers(0, total), max_size=4)))


def _remaining(n: int) -> bytes:
    return bytes((n,)) if n < 128 else bytes((0x80 | (n & 0x7F), n >> 7))


@SETTINGS
@given(packet_streams())
def test_feed_runs_expands_to_the_packets_feed_finds(stream: tuple[list[bytes], list[int]]) -> None:
    packets, cuts = stream
    data = b"".join(packets)
    plain, fast = Framer(), Framer()
    seen_plain: list[bytes] = []
    seen_fast: list[bytes] = []
    for piece in pieces(data, cuts):
        buf, frames = plain.feed(piece)
        seen_plain += [buf[s:e] for s, _, e in frames]
        buf, found = fast.feed_runs(piece)
        assert fast.last_runs == sum(1 for f in found if len(f) == 4)
        for f in found:
            if len(f) == 3:
                s, _b, e = f
                seen_fast.append(buf[s:e])
                continue
            s, _b, e, size = f
            assert (e - s) % size == 0 and (e - s) // size >= runs.RUN_MIN
            for at in range(s, e, size):
                assert buf[at] == buf[s]  # every packet of the run has the first one's header
                seen_fast.append(buf[at : at + size])
    assert seen_fast == seen_plain == packets


# ----------------------------------------------------------------------------------------- topic checks


@st.composite
def publish_runs(draw: st.DrawFn) -> tuple[bytes, int, int, bool, list[bytes], set[bytes]]:
    """(buffer, packet size, count, v5, topics in order, known topics): a run of PUBLISH packets of one
    fixed header whose topics (some of another length, the payload making up for it) change now and then,
    some with properties (v5) or a zero packet identifier."""
    v5 = draw(st.booleans())
    qos = draw(st.sampled_from([0, 1]))
    names = [b"dev/a", b"dev/b", b"dev/cc", b"x"]
    count = draw(st.integers(runs.RUN_MIN, 3 * runs.RUN_MIN))
    topics = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4))
    spans = sorted(draw(st.lists(st.integers(1, count - 1), max_size=len(topics) - 1, unique=True)))
    bad_pid = draw(st.sampled_from([None, *range(count)])) if qos else None
    bad_props = draw(st.sampled_from([None, *range(count)])) if v5 else None
    body = 40
    out: list[bytes] = []
    order: list[bytes] = []
    bounds = [0, *spans, count]
    for topic, (a, b) in zip(topics, itertools.pairwise(bounds), strict=False):
        for i in range(a, b):
            var = struct.pack("!H", len(topic)) + topic
            if qos:
                var += b"\x00\x00" if i == bad_pid else struct.pack("!H", i + 1)
            if v5:
                var += b"\x01\x01\x00" if i == bad_props else b"\x00"
            first = 0x30 | (qos << 1)
            out.append(bytes((first, body)) + var + b"p" * (body - len(var)))
            order.append(topic)
    known = set(draw(st.lists(st.sampled_from(names), max_size=4)))
    return b"".join(out), body + 2, len(out), v5, order, known


@SETTINGS
@given(publish_runs())
def test_same_known_topic_never_passes_a_packet_the_per_packet_check_would_not(
    run: tuple[bytes, int, int, bool, list[bytes], set[bytes]],
) -> None:
    buf, size, count, v5, order, known = run
    each = [_known_topic(known, buf, s + 2, s + size, buf[s], v5) for s in range(0, count * size, size)]
    fast = runs.same_known_topic(known, buf, 0, 2, size, count, v5)
    if fast:
        assert all(each)
    changes = sum(1 for a, b in itertools.pairwise(order) if a != b)
    one_length = len({len(t) for t in order}) == 1
    if all(each) and one_length and (changes + 1) * runs.TOPIC_SPAN <= count:
        assert fast  # it passes what the per-packet check passes, unless the topic changes often or length


def test_same_known_topic_on_one_encoded_topic() -> None:
    packet = codec.encode(Publish(topic="dev1/t", payload=b"v" * 32, qos=0), 4)
    buf = packet * 40
    size = len(packet)
    assert runs.same_known_topic({b"dev1/t"}, buf, 0, 2, size, 40, False)
    assert not runs.same_known_topic({b"dev1/u"}, buf, 0, 2, size, 40, False)


# ----------------------------------------------------------------------------------------- corrupted runs


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_runs_only_ever_raise_the_protocol_errors(data: st.DataObject) -> None:
    """A run with bytes overwritten anywhere (headers in the middle, lengths, keys, topic lengths past the
    packet, zero packet ids): the decoders raise their protocol errors or carry on, the topic check
    answers True or False, and nothing else escapes."""
    from ferryman.protocols.mqtt.errors import MqttError
    from ferryman.protocols.websocket.frames import FrameError

    body = data.draw(st.sampled_from([7, 44, 130]))  # remaining length: topic "a/b", packet id, payload
    count = data.draw(st.integers(runs.RUN_MIN, 3 * runs.RUN_MIN))
    packet = bytes((0x32,)) + _remaining(body) + b"\x00\x03a/b\x00\x01" + b"p" * (body - 7)
    stream = bytearray(packet * count)
    for _ in range(data.draw(st.integers(1, 6))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    mqtt = bytes(stream)
    with contextlib.suppress(MqttError):
        Framer().feed_runs(mqtt)
    hl = len(packet) - body
    for v5 in (False, True):
        assert runs.same_known_topic({b"a/b"}, mqtt, 0, hl, len(packet), count, v5) in (True, False)
    masked = data.draw(st.booleans())
    chunks = [mqtt[i : i + 40] for i in range(0, len(mqtt), 40)]
    wire = bytearray(b"".join(frame(c, masked, os.urandom(4)) for c in chunks))
    for _ in range(data.draw(st.integers(1, 6))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(FrameError):
        FrameDecoder(masked=masked).feed(bytes(wire))
