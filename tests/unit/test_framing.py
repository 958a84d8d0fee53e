"""The incremental Framer: whole packets, any split, several per chunk, remaining length limits."""

from __future__ import annotations

import pytest

from ferryman.protocols.mqtt.errors import MalformedPacket, PacketTooLarge
from ferryman.protocols.mqtt.framing import MAX_REMAINING_LENGTH, Framer, encode_remaining_length


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + bytes(encode_remaining_length(len(body))) + body


PUBLISH = packet(0x30, b"\x00\x03a/bhello")
PINGREQ = packet(0xC0, b"")
BIG = packet(0x30, b"\x00\x01t" + bytes(300))  # two-byte remaining length
STREAM = PUBLISH + PINGREQ + BIG + PUBLISH


def cut(buf: bytes, frames: list[tuple[int, int, int]]) -> list[bytes]:
    return [buf[start:end] for start, _, end in frames]


def test_whole_packet() -> None:
    buf, frames = Framer().feed(PUBLISH)
    assert frames == [(0, 2, len(PUBLISH))]
    assert buf[2:] == b"\x00\x03a/bhello"


def test_empty_body_packet() -> None:
    assert Framer().feed(PINGREQ)[1] == [(0, 2, 2)]


def test_several_packets_in_one_chunk() -> None:
    framer = Framer()
    buf, frames = framer.feed(STREAM)
    assert cut(buf, frames) == [PUBLISH, PINGREQ, BIG, PUBLISH]
    assert buf[: frames[-1][2]] == STREAM
    assert framer.buffered == 0


@pytest.mark.parametrize("at", range(1, len(STREAM)))
def test_split_at_every_byte(at: int) -> None:
    framer = Framer()
    got: list[bytes] = []
    for chunk in (STREAM[:at], STREAM[at:]):
        buf, frames = framer.feed(chunk)
        got += cut(buf, frames)
    assert got == [PUBLISH, PINGREQ, BIG, PUBLISH]
    assert framer.buffered == 0


def test_one_byte_at_a_time() -> None:
    framer = Framer()
    got: list[bytes] = []
    for i in range(len(STREAM)):
        buf, frames = framer.feed(STREAM[i : i + 1])
        got += cut(buf, frames)
    assert got == [PUBLISH, PINGREQ, BIG, PUBLISH]


def test_incomplete_packet_stays_buffered() -> None:
    framer = Framer()
    buf, frames = framer.feed(PUBLISH + BIG[:5])
    assert cut(buf, frames) == [PUBLISH]
    assert framer.buffered == 5


def test_largest_remaining_length_rejected_on_header_alone() -> None:
    header = b"\x30" + encode_remaining_length(MAX_REMAINING_LENGTH)
    assert header == b"\x30\xff\xff\xff\x7f"
    framer = Framer(max_packet_size=1 << 20)
    with pytest.raises(PacketTooLarge) as info:
        framer.feed(header)  # no body fed
    assert info.value.reason_code == 0x95


def test_too_large_rejected_when_header_completes_across_chunks() -> None:
    framer = Framer(max_packet_size=1 << 20)
    assert framer.feed(b"\x30\xff\xff") == (b"\x30\xff\xff", [])
    with pytest.raises(PacketTooLarge):
        framer.feed(b"\xff\x7f")


def test_five_byte_remaining_length_is_malformed() -> None:
    with pytest.raises(MalformedPacket) as info:
        Framer().feed(b"\x30\xff\xff\xff\xff\x01")
    assert info.value.reason_code == 0x81


def test_five_byte_remaining_length_detected_before_fifth_byte() -> None:
    # Four length bytes that all say "more follows" are already invalid.
    with pytest.raises(MalformedPacket):
        Framer().feed(b"\x30\x80\x80\x80\x80")


@pytest.mark.parametrize("length", [b"\x80\x00", b"\xff\x80\x00", b"\x80\x80\x80\x00", b"\x81\x00"])
def test_non_minimal_remaining_length_is_malformed(length: bytes) -> None:
    with pytest.raises(MalformedPacket):
        Framer().feed(b"\x30" + length + bytes(200))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, MAX_REMAINING_LENGTH])
def test_encode_remaining_length_is_minimal(n: int) -> None:
    enc = encode_remaining_length(n)
    assert len(enc) == 1 + (n >= 128) + (n >= 16384) + (n >= 2_097_152)
    value = sum((b & 0x7F) << (7 * i) for i, b in enumerate(enc))
    assert value == n


def test_encode_remaining_length_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_remaining_length(MAX_REMAINING_LENGTH + 1)
    with pytest.raises(ValueError):
        encode_remaining_length(-1)


def test_max_packet_size_boundary() -> None:
    exact = packet(0x30, b"\x00\x01t" + bytes(100))
    size = len(exact)
    buf, frames = Framer(max_packet_size=size).feed(exact)
    assert cut(buf, frames) == [exact]
    with pytest.raises(PacketTooLarge):
        Framer(max_packet_size=size - 1).feed(exact)
    one_more = packet(0x30, b"\x00\x01t" + bytes(101))
    with pytest.raises(PacketTooLarge):
        Framer(max_packet_size=size).feed(one_more[:3])  # header alone is enough


def test_max_packet_size_counts_the_fixed_header() -> None:
    # 2 + 126 = 128 bytes with a one-byte length; 3 + 128 = 131 with a two-byte one.
    assert len(packet(0x30, bytes(126))) == 128
    Framer(max_packet_size=128).feed(packet(0x30, b"\x00\x01t" + bytes(123)))
    with pytest.raises(PacketTooLarge):
        Framer(max_packet_size=130).feed(packet(0x30, b"\x00\x01t" + bytes(125)))
