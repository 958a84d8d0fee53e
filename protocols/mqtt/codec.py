"""Decode MQTT 3.1 / 3.1.1 / 5 packet bodies into dataclasses, validating as the spec requires.

``decode(first_byte, body, version)`` takes what ``Framer`` yields: the fixed header's first byte and the
variable header plus payload. ``publish_fields`` is the data plane's fast path: it reads and validates only
a PUBLISH's topic (and MQTT 5 Topic Alias) straight from the framer's buffer, without touching the payload.
Encoding lives in ``encoder.py`` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from ferryman.actors.topics import filter_error, topic_name_error

from .constants import ALLOWED_REASON_CODES, V3_SUBACK_RETURN_CODES, WILL, PacketType, PropertyId
from .encoder import encode
from .errors import (
    MalformedPacket,
    ProtocolError,
    TooManyElements,
    TopicFilterInvalid,
    TopicNameInvalid,
    UnsupportedProtocolVersion,
)
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
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
from .properties import decode_properties, read_binary, read_string, read_u16

__all__ = [
    "NO_LIMITS",
    "PROTOCOLS",
    "Limits",
    "changed_bytes",
    "decode",
    "decode_connect",
    "encode",
    "publish_fields",
]

# (protocol name, protocol level) pairs a CONNECT may carry.
PROTOCOLS = frozenset((("MQTT", 4), ("MQTT", 5), ("MQIsdp", 3)))

_P = PacketType
_SUBSCRIPTION_IDENTIFIER = int(PropertyId.SUBSCRIPTION_IDENTIFIER)
_TOPIC_ALIAS = PropertyId.TOPIC_ALIAS.value
_USER_PROPERTY = PropertyId.USER_PROPERTY.value


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on the elements of one packet, 0 for none: repeatable properties (User Property; Subscription
    Identifier in a PUBLISH) per packet, topic filters per SUBSCRIBE / UNSUBSCRIBE. Decoding stops with
    ``TooManyElements`` (0x95) at the first element past a cap, so an element-heavy packet costs no more
    than one at the cap. A proxy decodes its clients' packets with its listener's caps."""

    user_properties: int = 0
    topic_filters: int = 0


NO_LIMITS = Limits()

Decoder = Callable[[bytes, int, bool, Limits], Packet]


def decode(first_byte: int, body: bytes | memoryview, version: int, limits: Limits = NO_LIMITS) -> Packet:
    """Decode one packet. ``version`` is 5 for MQTT 5, anything else means 3.1.1/3.1 (CONNECT ignores it
    and uses its own protocol level). Raises an ``MqttError`` subclass when the packet is not valid, or
    ``TooManyElements`` when it holds more elements than ``limits`` allows."""
    data = body if type(body) is bytes else bytes(body)
    ptype = first_byte >> 4
    flags = first_byte & 0x0F
    if ptype != 3 and flags != _FLAGS[ptype]:
        if ptype == 0:
            raise MalformedPacket("reserved packet type 0")
        raise MalformedPacket(
            f"{_P(ptype).name} fixed header flags are 0x{flags:X}, must be 0x{_FLAGS[ptype]:X}"
        )
    return _DECODERS[ptype](data, flags, version == 5, limits)


def changed_bytes(raw: bytes, packet: Packet, version: int) -> bytes | None:
    """The bytes of ``packet`` when it differs from the packet ``raw`` encodes, else None (send ``raw`` as
    it came). An interceptor may return the packet it was given, changed in place or not, or a new one: only
    the encodings tell. ``raw`` is compared as it is and in its canonical encoding, so a sender's
    non-canonical but equal bytes (a long-form ack, say) are passed on untouched."""
    encoded = encode(packet, version)
    if encoded == raw:
        return None
    header = 2
    while raw[header - 1] & 0x80:
        header += 1
    return None if encoded == encode(decode(raw[0], raw[header:], version), version) else encoded


def decode_connect(body: bytes | memoryview) -> Connect:
    """Decode a CONNECT body (any protocol level)."""
    return _decode_connect(body if type(body) is bytes else bytes(body), 0, False, NO_LIMITS)


def publish_fields(
    buf: bytes,
    body: int,
    end: int,
    first_byte: int,
    version: int,
    from_client: bool = False,
    limits: Limits = NO_LIMITS,
) -> tuple[str, int | None, int, int]:
    """``(topic, topic alias or None, payload offset, packet id or 0)`` of the PUBLISH at ``buf[body:end]``,
    payload untouched: the proxy's per-PUBLISH fast path.

    Validates the fixed header flags, the topic, the packet identifier and the properties exactly as
    ``decode`` does (it is the same code), so a packet that passes here differs from a decodable one only
    in its payload (which decode does not validate either). ``from_client``: a Subscription Identifier is
    a protocol error in a PUBLISH a client sends (MQTT-3.3.4-6); only servers add them."""
    topic, packet_id, props, pos = _publish_head(
        buf, body, end, first_byte & 0x0F, version == 5, limits.user_properties
    )
    alias = None
    for pid, value in props:
        if pid == _TOPIC_ALIAS:
            alias = cast(int, value)
        elif pid == _SUBSCRIPTION_IDENTIFIER and from_client:
            raise ProtocolError("a client PUBLISH must not carry a Subscription Identifier")
    return topic, alias, pos, packet_id or 0


def _publish_head(
    data: bytes, pos: int, end: int, flags: int, v5: bool, max_props: int = 0
) -> tuple[str, int | None, Properties, int]:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if flags & 8 and not qos:
        raise MalformedPacket("PUBLISH with DUP set and QoS 0")
    topic, pos = read_string(data, pos, end, "topic name")
    packet_id = None
    if qos:
        packet_id, pos = read_u16(data, pos, end, "packet identifier")
        if not packet_id:
            raise ProtocolError("PUBLISH with QoS > 0 and packet identifier 0")
    props: Properties = []
    if v5:
        if pos < end and data[pos] == 0:
            pos += 1
        else:
            props, pos = decode_properties(data, pos, end, _P.PUBLISH, max_props)
    if topic:
        # read_string has checked UTF-8, U+0000 and the length; only wildcards are left (hot: per PUBLISH).
        if "+" in topic or "#" in topic:
            raise TopicNameInvalid(f"PUBLISH topic {topic!r}: wildcards are not allowed in a topic name")
    elif not v5 or not any(pid == _TOPIC_ALIAS for pid, _ in props):
        raise ProtocolError("PUBLISH with an empty topic name" + (" and no Topic Alias" if v5 else ""))
    return topic, packet_id, props, pos


def _decode_publish(data: bytes, flags: int, v5: bool, lim: Limits) -> Publish:
    topic, packet_id, props, pos = _publish_head(data, 0, len(data), flags, v5, lim.user_properties)
    qos = (flags >> 1) & 3
    return Publish(topic, data[pos:], qos, bool(flags & 1), bool(flags & 8), packet_id, props)


def _decode_connect(data: bytes, flags: int, v5: bool, lim: Limits) -> Connect:
    end = len(data)
    name, pos = read_string(data, 0, end, "protocol name")
    if pos >= end:
        raise MalformedPacket("CONNECT protocol level missing")
    level = data[pos]
    if (name, level) not in PROTOCOLS:
        raise UnsupportedProtocolVersion(f"unsupported protocol {name!r} level {level}")
    if pos + 4 > end:
        raise MalformedPacket("CONNECT flags or keep alive truncated")
    cflags = data[pos + 1]
    keepalive = (data[pos + 2] << 8) | data[pos + 3]
    pos += 4
    if cflags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 3
    will_retain = bool(cflags & 0x20)
    if will_flag:
        if will_qos == 3:
            raise MalformedPacket("CONNECT will QoS 3")
    elif will_qos or will_retain:
        raise MalformedPacket("CONNECT will QoS or will retain set without the will flag")
    v5 = level == 5
    if cflags & 0x40 and not cflags & 0x80 and not v5:
        raise MalformedPacket("CONNECT password flag set without the user name flag")
    props: Properties = []
    if v5:
        props, pos = decode_properties(data, pos, end, _P.CONNECT, lim.user_properties)
    client_id, pos = read_string(data, pos, end, "client identifier")
    clean_start = bool(cflags & 0x02)
    if not client_id and not clean_start and not v5:
        raise ProtocolError("empty client identifier requires clean session", 0x85)
    will = None
    if will_flag:
        will_props: Properties = []
        if v5:
            will_props, pos = decode_properties(data, pos, end, WILL, lim.user_properties)
            cap = lim.user_properties
            if cap and sum(p == _USER_PROPERTY for p, _ in (*props, *will_props)) > cap:
                # One cap for the packet, CONNECT and will properties together (each block was capped).
                raise TooManyElements(f"more than {cap} user properties (max_user_properties) in one packet")
        will_topic, pos = read_string(data, pos, end, "will topic")
        err = topic_name_error(will_topic) if will_topic else "empty topic name"
        if err:
            raise TopicNameInvalid(f"will topic {will_topic!r}: {err}")
        will_payload, pos = read_binary(data, pos, end, "will payload")
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = password = None
    if cflags & 0x80:
        username, pos = read_string(data, pos, end, "user name")
    if cflags & 0x40:
        password, pos = read_binary(data, pos, end, "password")
    _check_end(pos, end, "CONNECT")
    return Connect(client_id, level, name, clean_start, keepalive, username, password, will, props)


def _decode_connack(data: bytes, flags: int, v5: bool, lim: Limits) -> Connack:
    end = len(data)
    if end < (3 if v5 else 2):
        raise MalformedPacket("CONNACK truncated")
    ack = data[0]
    if ack & 0xFE:
        raise MalformedPacket("CONNACK reserved acknowledge flags are set")
    code = data[1]
    props: Properties = []
    if v5:
        _check_reason(code, _P.CONNACK)
        props, pos = decode_properties(data, 2, end, _P.CONNACK, lim.user_properties)
        _check_end(pos, end, "CONNACK")
    elif end != 2:
        raise MalformedPacket("CONNACK has bytes after the return code")
    elif code > 5:
        raise MalformedPacket(f"CONNACK return code {code} is reserved")
    if ack and code:
        raise ProtocolError("CONNACK with session present and a failure code")
    return Connack(bool(ack), code, props)


def _ack_decoder(cls: type[Puback | Pubrec | Pubrel | Pubcomp]) -> Decoder:
    ptype = cls.packet_type
    allowed = ALLOWED_REASON_CODES[ptype]

    def decode_ack(data: bytes, flags: int, v5: bool, lim: Limits) -> Packet:
        end = len(data)
        packet_id = _packet_id(data, end, ptype)
        if end == 2:
            return cls(packet_id)
        if not v5:
            raise MalformedPacket(f"{ptype.name} has bytes after the packet identifier")
        code = data[2]
        if code not in allowed:
            raise MalformedPacket(f"{ptype.name} reason code 0x{code:02X} is not allowed")
        if end == 3:
            return cls(packet_id, code)
        props, pos = decode_properties(data, 3, end, ptype, lim.user_properties)
        _check_end(pos, end, ptype.name)
        return cls(packet_id, code, props)

    return decode_ack


def _decode_subscribe(data: bytes, flags: int, v5: bool, lim: Limits) -> Subscribe:
    end = len(data)
    packet_id = _packet_id(data, end, _P.SUBSCRIBE)
    pos = 2
    props: Properties = []
    if v5:
        props, pos = decode_properties(data, pos, end, _P.SUBSCRIBE, lim.user_properties)
    subs: list[Subscription] = []
    cap = lim.topic_filters
    while pos < end:
        if cap and len(subs) >= cap:
            raise TooManyElements(f"SUBSCRIBE with more than {cap} topic filters (max_topic_filters)")
        topic_filter, pos = read_string(data, pos, end, "topic filter")
        if pos >= end:
            raise MalformedPacket(f"subscription options of {topic_filter!r} missing")
        opts = data[pos]
        pos += 1
        qos = opts & 3
        if v5:
            if opts & 0xC0:
                raise MalformedPacket("SUBSCRIBE reserved subscription option bits are set")
            if qos == 3:
                raise ProtocolError(f"SUBSCRIBE to {topic_filter!r} with maximum QoS 3")
            retain_handling = (opts >> 4) & 3
            if retain_handling == 3:
                raise ProtocolError(f"SUBSCRIBE to {topic_filter!r} with retain handling 3")
            no_local = bool(opts & 4)
            _check_filter(topic_filter, True)
            if no_local and topic_filter.startswith("$share/"):
                raise ProtocolError(f"no local set on shared subscription {topic_filter!r}")
            subs.append(Subscription(topic_filter, qos, no_local, bool(opts & 8), retain_handling))
        else:
            if opts & 0xFC:
                raise MalformedPacket("SUBSCRIBE reserved QoS byte bits are set")
            if qos == 3:
                raise MalformedPacket(f"SUBSCRIBE to {topic_filter!r} with QoS 3")
            _check_filter(topic_filter, False)
            subs.append(Subscription(topic_filter, qos))
    if not subs:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, subs, props)


def _decode_unsubscribe(data: bytes, flags: int, v5: bool, lim: Limits) -> Unsubscribe:
    end = len(data)
    packet_id = _packet_id(data, end, _P.UNSUBSCRIBE)
    pos = 2
    props: Properties = []
    if v5:
        props, pos = decode_properties(data, pos, end, _P.UNSUBSCRIBE, lim.user_properties)
    filters: list[str] = []
    cap = lim.topic_filters
    while pos < end:
        if cap and len(filters) >= cap:
            raise TooManyElements(f"UNSUBSCRIBE with more than {cap} topic filters (max_topic_filters)")
        topic_filter, pos = read_string(data, pos, end, "topic filter")
        _check_filter(topic_filter, v5)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, filters, props)


def _decode_suback(data: bytes, flags: int, v5: bool, lim: Limits) -> Suback:
    end = len(data)
    packet_id = _packet_id(data, end, _P.SUBACK)
    pos = 2
    props: Properties = []
    if v5:
        props, pos = decode_properties(data, pos, end, _P.SUBACK, lim.user_properties)
    codes = list(data[pos:end])
    if not codes:
        raise ProtocolError("SUBACK without reason codes")
    allowed = ALLOWED_REASON_CODES[_P.SUBACK] if v5 else V3_SUBACK_RETURN_CODES
    for code in codes:
        if code not in allowed:
            raise MalformedPacket(f"SUBACK reason code 0x{code:02X} is not allowed")
    return Suback(packet_id, codes, props)


def _decode_unsuback(data: bytes, flags: int, v5: bool, lim: Limits) -> Unsuback:
    end = len(data)
    packet_id = _packet_id(data, end, _P.UNSUBACK)
    if not v5:
        _check_end(2, end, "UNSUBACK")
        return Unsuback(packet_id)
    props, pos = decode_properties(data, 2, end, _P.UNSUBACK, lim.user_properties)
    codes = list(data[pos:end])
    if not codes:
        raise ProtocolError("UNSUBACK without reason codes")
    for code in codes:
        _check_reason(code, _P.UNSUBACK)
    return Unsuback(packet_id, codes, props)


def _decode_pingreq(data: bytes, flags: int, v5: bool, lim: Limits) -> Pingreq:
    _check_end(0, len(data), "PINGREQ")
    return Pingreq()


def _decode_pingresp(data: bytes, flags: int, v5: bool, lim: Limits) -> Pingresp:
    _check_end(0, len(data), "PINGRESP")
    return Pingresp()


def _decode_disconnect(data: bytes, flags: int, v5: bool, lim: Limits) -> Disconnect:
    if not v5:
        _check_end(0, len(data), "DISCONNECT")
        return Disconnect()
    code, props = _reason_and_properties(data, _P.DISCONNECT, lim.user_properties)
    return Disconnect(code, props)


def _decode_auth(data: bytes, flags: int, v5: bool, lim: Limits) -> Auth:
    if not v5:
        raise MalformedPacket("AUTH is reserved before MQTT 5")
    code, props = _reason_and_properties(data, _P.AUTH, lim.user_properties)
    return Auth(code, props)


def _reason_and_properties(data: bytes, ptype: PacketType, cap: int = 0) -> tuple[int, Properties]:
    """DISCONNECT/AUTH body: empty, a reason code alone, or a reason code and properties."""
    end = len(data)
    if not end:
        return 0, []
    code = data[0]
    _check_reason(code, ptype)
    if end == 1:
        if ptype == _P.AUTH:
            # Only DISCONNECT may omit the property length alone; AUTH omits both or neither (3.15.2.1).
            raise MalformedPacket("AUTH property length missing")
        return code, []
    props, pos = decode_properties(data, 1, end, ptype, cap)
    _check_end(pos, end, ptype.name)
    return code, props


def _reserved(data: bytes, flags: int, v5: bool, lim: Limits) -> Packet:
    raise MalformedPacket("reserved packet type 0")


def _packet_id(data: bytes, end: int, ptype: PacketType) -> int:
    if end < 2:
        raise MalformedPacket(f"{ptype.name} packet identifier truncated")
    packet_id = (data[0] << 8) | data[1]
    if not packet_id:
        raise ProtocolError(f"{ptype.name} with packet identifier 0")
    return packet_id


def _check_end(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise MalformedPacket(f"{what} has {end - pos} bytes after its last field")


def _check_reason(code: int, ptype: PacketType) -> None:
    if code not in ALLOWED_REASON_CODES[ptype]:
        raise MalformedPacket(f"{ptype.name} reason code 0x{code:02X} is not allowed")


def _check_filter(topic_filter: str, v5: bool) -> None:
    err = filter_error(topic_filter)
    if err is None and v5 and topic_filter.startswith("$share/"):
        # MQTT 5 4.8.2: $share/{ShareName}/{filter}, ShareName non-empty without "+" or "#".
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2] or "+" in parts[1] or "#" in parts[1]:
            err = "shared subscription must be $share/<name>/<filter> with a name free of wildcards"
    if err is not None:
        raise TopicFilterInvalid(f"topic filter {topic_filter!r}: {err}")


# Required fixed header flags (low nibble) per packet type; PUBLISH (3) is checked by its decoder.
_FLAGS = (-1, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)

_DECODERS: tuple[Decoder, ...] = (
    _reserved,
    _decode_connect,
    _decode_connack,
    _decode_publish,
    _ack_decoder(Puback),
    _ack_decoder(Pubrec),
    _ack_decoder(Pubrel),
    _ack_decoder(Pubcomp),
    _decode_subscribe,
    _decode_suback,
    _decode_unsubscribe,
    _decode_unsuback,
    _decode_pingreq,
    _decode_pingresp,
    _decode_disconnect,
    _decode_auth,
)
