"""Primitive MQTT data types (spec 1.5) and the MQTT 5 property block (spec 2.2.2).

Readers take ``(data, pos, end)`` and return ``(value, new_pos)``; they never read at or past ``end`` and
raise ``MalformedPacket`` when a field does not fit. Writers append to a ``bytearray``.
"""

from __future__ import annotations

from typing import cast

from ferryman.actors.topics import topic_name_error

from .constants import PROPERTIES, WILL, PacketType, PropertyId, PropertyType
from .errors import MalformedPacket, ProtocolError, TooManyElements
from .framing import encode_remaining_length
from .packets import Properties

__all__ = [
    "decode_properties",
    "encode_properties",
    "read_binary",
    "read_string",
    "read_u16",
    "read_varint",
    "write_binary",
    "write_string",
    "write_varint",
]

_BYTE = PropertyType.BYTE
_TWO = PropertyType.TWO_BYTE_INT
_FOUR = PropertyType.FOUR_BYTE_INT
_VARINT = PropertyType.VARINT
_STRING = PropertyType.UTF8_STRING
_BINARY = PropertyType.BINARY
_PAIR = PropertyType.STRING_PAIR
_TOPIC_ALIAS = PropertyId.TOPIC_ALIAS.value
_RESPONSE_TOPIC = PropertyId.RESPONSE_TOPIC.value
_NAMES = {p.value: p.name for p in PropertyId}
# For each packet type (and WILL): property id -> (data type, may repeat, allowed values or None).
_BY_PACKET: dict[int, dict[int, tuple[PropertyType, bool, range | None]]] = {
    where: {
        pid: (spec.type, where in spec.repeatable, spec.values)
        for pid, spec in PROPERTIES.items()
        if where in spec.allowed
    }
    for where in (WILL, *PacketType)
}


def read_u16(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    if pos + 2 > end:
        raise MalformedPacket(f"{what} truncated")
    return (data[pos] << 8) | data[pos + 1], pos + 2


def read_varint(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """A variable byte integer of at most four bytes."""
    value = 0
    shift = 0
    for i in range(pos, min(pos + 4, end)):
        b = data[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and i > pos:
                raise MalformedPacket(f"{what}: variable byte integer not minimally encoded")
            return value, i + 1
        shift += 7
    if end - pos >= 4:
        raise MalformedPacket(f"{what}: variable byte integer longer than four bytes")
    raise MalformedPacket(f"{what} truncated")


def read_string(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    """A UTF-8 encoded string: well-formed UTF-8 (no surrogates), no U+0000 (spec 1.5.4)."""
    if pos + 2 > end:
        raise MalformedPacket(f"{what}: string length truncated")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise MalformedPacket(f"{what}: string runs past the end of its field")
    try:
        s = data[pos + 2 : stop].decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPacket(f"{what}: invalid UTF-8 ({e.reason})") from None
    if "\x00" in s:
        raise MalformedPacket(f"{what}: string contains U+0000")
    return s, stop


def read_binary(data: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise MalformedPacket(f"{what}: binary length truncated")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise MalformedPacket(f"{what}: binary data runs past the end of its field")
    return bytes(data[pos + 2 : stop]), stop


def write_varint(out: bytearray, n: int) -> None:
    """Appends ``n`` as a Variable Byte Integer (MQTT 1.5.5): the one encoder, ``encode_remaining_length``."""
    out += encode_remaining_length(n)


def write_string(out: bytearray, s: str) -> None:
    if "\x00" in s:
        raise ValueError(f"string {s!r} contains U+0000")
    b = s.encode("utf-8")  # surrogates raise UnicodeEncodeError (a ValueError)
    if len(b) > 65535:
        raise ValueError(f"string of {len(b)} bytes is longer than 65535")
    out += len(b).to_bytes(2, "big")
    out += b


def write_binary(out: bytearray, b: bytes) -> None:
    if len(b) > 65535:
        raise ValueError(f"binary data of {len(b)} bytes is longer than 65535")
    out += len(b).to_bytes(2, "big")
    out += b


def decode_properties(
    data: bytes, pos: int, end: int, where: int, max_repeated: int = 0
) -> tuple[Properties, int]:
    """The property block at ``pos`` of a packet (or, ``where == WILL``, will properties) of type ``where``.

    Unknown or misplaced identifiers and values that overrun the block are a Malformed Packet; duplicates of
    a property that may not repeat, out-of-range values and a Response Topic that is no valid topic name
    are a Protocol Error (Topic Alias 0: 0x94).

    ``max_repeated`` (0: no cap) bounds the properties that may repeat (User Property, and Subscription
    Identifier in a PUBLISH): the block is abandoned with ``TooManyElements`` (0x95) at the first one
    past it, so a block of 200,000 user properties costs what ``max_repeated`` of them cost.
    """
    length, pos = read_varint(data, pos, end, "property length")
    if not length:
        return [], pos
    stop = pos + length
    if stop > end:
        raise MalformedPacket(f"property length {length} runs past the end of the packet")
    props: Properties = []
    seen: set[int] = set()
    table = _BY_PACKET[where]
    repeated = 0
    while pos < stop:
        pid = data[pos]
        entry = table.get(pid)
        if entry is None:
            if pid in PROPERTIES:
                raise MalformedPacket(f"property {_NAMES[pid]} is not allowed here")
            raise MalformedPacket(f"unknown property identifier 0x{pid:02X}")
        t, repeatable, values = entry
        if repeatable:
            repeated += 1
            if max_repeated and repeated > max_repeated:
                raise TooManyElements(
                    f"more than {max_repeated} user properties (max_user_properties) in one packet"
                )
        elif pid in seen:
            raise ProtocolError(f"property {_NAMES[pid]} appears more than once")
        seen.add(pid)
        pos += 1
        value: object
        if t is _STRING:
            value, pos = read_string(data, pos, stop, _NAMES[pid])
            if pid == _RESPONSE_TOPIC:
                # MQTT 5 3.3.2.3.5: used as a Topic Name, so no wildcards (and, 4.7.3, not empty)
                err = topic_name_error(value) if value else "empty topic name"
                if err:
                    raise ProtocolError(f"RESPONSE_TOPIC {value!r}: {err}")
        elif t is _PAIR:
            k, pos = read_string(data, pos, stop, "user property name")
            v, pos = read_string(data, pos, stop, "user property value")
            value = (k, v)
        elif t is _BYTE:
            if pos >= stop:
                raise MalformedPacket(f"property {_NAMES[pid]} truncated")
            value = data[pos]
            pos += 1
        elif t is _TWO:
            value, pos = read_u16(data, pos, stop, _NAMES[pid])
        elif t is _FOUR:
            if pos + 4 > stop:
                raise MalformedPacket(f"property {_NAMES[pid]} truncated")
            value = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
        elif t is _VARINT:
            value, pos = read_varint(data, pos, stop, _NAMES[pid])
        else:
            value, pos = read_binary(data, pos, stop, _NAMES[pid])
        if values is not None and value not in values:
            raise ProtocolError(
                f"property {_NAMES[pid]} has invalid value {value!r}",
                0x94 if pid == _TOPIC_ALIAS else None,
            )
        props.append((pid, value))
    return props, stop


def encode_properties(out: bytearray, props: Properties) -> None:
    """Append the property block (length included) for ``props`` in their order. No placement checks:
    encoding writes what it is given."""
    if not props:
        out.append(0)
        return
    block = bytearray()
    for pid, value in props:
        spec = PROPERTIES.get(pid)
        if spec is None:
            raise ValueError(f"unknown property identifier {pid}")
        block.append(pid)
        t = spec.type
        if t is _STRING:
            write_string(block, value)  # type: ignore[arg-type]
        elif t is _PAIR:
            k, v = cast(tuple[str, str], value)
            write_string(block, k)
            write_string(block, v)
        elif t is _BYTE:
            block.append(value)  # type: ignore[arg-type]
        elif t is _TWO:
            block += value.to_bytes(2, "big")  # type: ignore[attr-defined]
        elif t is _FOUR:
            block += value.to_bytes(4, "big")  # type: ignore[attr-defined]
        elif t is _VARINT:
            write_varint(block, value)  # type: ignore[arg-type]
        else:
            write_binary(block, value)  # type: ignore[arg-type]
    write_varint(out, len(block))
    out += block
