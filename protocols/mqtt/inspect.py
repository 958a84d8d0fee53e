"""Reading the few fields of a PUBLISH the proxy needs, without decoding the whole packet."""

from __future__ import annotations

from .errors import MalformedPacket, ProtocolError

__all__ = ["packet_id_at", "publish_fields"]

_TOPIC_ALIAS = 35
# Size of each MQTT 5 property's value by id: a fixed width, or a negative code for variable ones.
_VARINT, _STRING, _PAIR = -1, -2, -3
_WIDTH: dict[int, int] = {
    1: 1, 23: 1, 25: 1, 36: 1, 37: 1, 40: 1, 41: 1, 42: 1,
    19: 2, 33: 2, 34: 2, 35: 2,
    2: 4, 17: 4, 24: 4, 39: 4,
    11: _VARINT,
    3: _STRING, 8: _STRING, 18: _STRING, 21: _STRING, 26: _STRING, 28: _STRING, 31: _STRING,
    9: _STRING, 22: _STRING,
    38: _PAIR,
}  # fmt: skip


def packet_id_at(buf: bytes, pos: int) -> int:
    return (buf[pos] << 8) | buf[pos + 1]


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value, mult = 0, 1
    for _ in range(4):
        if pos >= end:
            raise MalformedPacket("truncated variable byte integer")
        b = buf[pos]
        pos += 1
        value += (b & 0x7F) * mult
        if b < 0x80:
            return value, pos
        mult <<= 7
    raise MalformedPacket("variable byte integer longer than four bytes")


def publish_fields(buf: bytes, body: int, end: int, flags: int, v5: bool) -> tuple[str, int | None, int, int]:
    """(topic, topic alias or None, payload offset, packet id or 0) of the PUBLISH at ``buf[body:end]``.

    Validates what the proxy relies on: the topic is UTF-8 without wildcards or U+0000, the header fits.
    """
    if body + 2 > end:
        raise MalformedPacket("PUBLISH too short for a topic")
    tlen = (buf[body] << 8) | buf[body + 1]
    pos = body + 2 + tlen
    if pos > end:
        raise MalformedPacket("PUBLISH topic runs past the packet")
    try:
        topic = buf[body + 2 : pos].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH topic is not valid UTF-8") from None
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise ProtocolError("invalid PUBLISH topic name", 0x90)
    qos = (flags >> 1) & 3
    pid = 0
    if qos:
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        if pos + 2 > end:
            raise MalformedPacket("PUBLISH too short for a packet identifier")
        pid = (buf[pos] << 8) | buf[pos + 1]
        if pid == 0:
            raise ProtocolError("PUBLISH packet identifier 0")
        pos += 2
    alias: int | None = None
    if v5:
        plen, pos = _varint(buf, pos, end)
        pend = pos + plen
        if pend > end:
            raise MalformedPacket("PUBLISH properties run past the packet")
        while pos < pend:
            pid_ = buf[pos]
            pos += 1
            width = _WIDTH.get(pid_)
            if width is None:
                raise MalformedPacket(f"unknown property 0x{pid_:02x}")
            if pid_ == _TOPIC_ALIAS:
                if pos + 2 > pend:
                    raise MalformedPacket("truncated topic alias")
                alias = (buf[pos] << 8) | buf[pos + 1]
                if alias == 0:
                    raise ProtocolError("topic alias 0", 0x94)
            if width > 0:
                pos += width
            elif width == _VARINT:
                _, pos = _varint(buf, pos, pend)
            else:
                for _ in range(2 if width == _PAIR else 1):
                    if pos + 2 > pend:
                        raise MalformedPacket("truncated property")
                    pos += 2 + ((buf[pos] << 8) | buf[pos + 1])
            if pos > pend:
                raise MalformedPacket("property runs past the property block")
        if not topic and alias is None:
            raise ProtocolError("empty PUBLISH topic without a topic alias", 0x82)
    elif not topic:
        raise ProtocolError("empty PUBLISH topic", 0x82)
    return topic, alias, pos, pid
