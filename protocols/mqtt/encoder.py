"""Encode packet dataclasses into whole MQTT packets (fixed header included).

On 3.x properties are not written, PUBACK-family reason codes are dropped, and CONNACK's ``reason_code`` is
written as the 3.1.1 return code byte. On 5 the short forms the spec allows are used: PUBACK/PUBREC/PUBREL/
PUBCOMP/DISCONNECT/AUTH omit the reason code when it is 0 and there are no properties, and all but AUTH omit
the property length when there are no properties (AUTH has no one-byte form). Encoding trusts its input
beyond what it must check to produce bytes (``ValueError`` for strings that cannot be encoded, a missing
packet id, AUTH on 3.x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .framing import encode_remaining_length
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from .properties import encode_properties, write_binary, write_string

__all__ = ["encode"]

# Each encoder appends the body to ``out`` and returns the fixed header's first byte.
Encoder = Callable[[Any, bytearray, bool], int]


def encode(packet: Packet, version: int) -> bytes:
    """The whole packet for protocol ``version`` (5, or 4/3 for 3.1.1/3.1). CONNECT uses its own level."""
    body = bytearray()
    first = _ENCODERS[type(packet)](packet, body, version == 5)
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def _packet_id(out: bytearray, packet_id: int | None) -> None:
    if packet_id is None or not 0 < packet_id < 65536:
        raise ValueError(f"packet identifier {packet_id!r} is not in 1..65535")
    out += packet_id.to_bytes(2, "big")


def _connect(p: Connect, out: bytearray, v5: bool) -> int:
    v5 = p.protocol_level == 5
    write_string(out, p.protocol_name)
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        flags |= 0x40
    out.append(p.protocol_level)
    out.append(flags)
    out += p.keepalive.to_bytes(2, "big")
    if v5:
        encode_properties(out, p.properties)
    write_string(out, p.client_id)
    if will is not None:
        if v5:
            encode_properties(out, will.properties)
        write_string(out, will.topic)
        write_binary(out, will.payload)
    if p.username is not None:
        write_string(out, p.username)
    if p.password is not None:
        write_binary(out, p.password)
    return 0x10


def _connack(p: Connack, out: bytearray, v5: bool) -> int:
    out.append(1 if p.session_present else 0)
    out.append(p.reason_code)
    if v5:
        encode_properties(out, p.properties)
    return 0x20


def _publish(p: Publish, out: bytearray, v5: bool) -> int:
    write_string(out, p.topic)
    if p.qos:
        _packet_id(out, p.packet_id)
    if v5:
        encode_properties(out, p.properties)
    out += p.payload
    return 0x30 | (0x08 if p.dup else 0) | (p.qos << 1) | (0x01 if p.retain else 0)


def _ack_encoder(first: int) -> Encoder:
    def encode_ack(p: Puback | Pubrec | Pubrel | Pubcomp, out: bytearray, v5: bool) -> int:
        _packet_id(out, p.packet_id)
        if v5 and (p.reason_code or p.properties):
            out.append(p.reason_code)
            if p.properties:
                encode_properties(out, p.properties)
        return first

    return encode_ack


def _subscribe(p: Subscribe, out: bytearray, v5: bool) -> int:
    _packet_id(out, p.packet_id)
    if v5:
        encode_properties(out, p.properties)
    for s in p.subscriptions:
        write_string(out, s.topic_filter)
        if v5:
            out.append(
                s.qos
                | (0x04 if s.no_local else 0)
                | (0x08 if s.retain_as_published else 0)
                | (s.retain_handling << 4)
            )
        else:
            out.append(s.qos)
    return 0x82


def _suback(p: Suback, out: bytearray, v5: bool) -> int:
    _packet_id(out, p.packet_id)
    if v5:
        encode_properties(out, p.properties)
    out += bytes(p.reason_codes)
    return 0x90


def _unsubscribe(p: Unsubscribe, out: bytearray, v5: bool) -> int:
    _packet_id(out, p.packet_id)
    if v5:
        encode_properties(out, p.properties)
    for f in p.topic_filters:
        write_string(out, f)
    return 0xA2


def _unsuback(p: Unsuback, out: bytearray, v5: bool) -> int:
    _packet_id(out, p.packet_id)
    if v5:
        encode_properties(out, p.properties)
        out += bytes(p.reason_codes)
    return 0xB0


def _reason_encoder(first: int) -> Encoder:
    def encode_reason(p: Disconnect | Auth, out: bytearray, v5: bool) -> int:
        if v5:
            if p.reason_code or p.properties:
                out.append(p.reason_code)
                # DISCONNECT may drop an empty property length; AUTH may not (spec 3.14.2.2.1, 3.15.2.1).
                if p.properties or first == 0xF0:
                    encode_properties(out, p.properties)
        elif first == 0xF0:
            raise ValueError("AUTH exists only in MQTT 5")
        return first

    return encode_reason


def _empty_encoder(first: int) -> Encoder:
    def encode_empty(p: Pingreq | Pingresp, out: bytearray, v5: bool) -> int:
        return first

    return encode_empty


_ENCODERS: dict[type, Encoder] = {
    Connect: _connect,
    Connack: _connack,
    Publish: _publish,
    Puback: _ack_encoder(0x40),
    Pubrec: _ack_encoder(0x50),
    Pubrel: _ack_encoder(0x62),
    Pubcomp: _ack_encoder(0x70),
    Subscribe: _subscribe,
    Suback: _suback,
    Unsubscribe: _unsubscribe,
    Unsuback: _unsuback,
    Pingreq: _empty_encoder(0xC0),
    Pingresp: _empty_encoder(0xD0),
    Disconnect: _reason_encoder(0xE0),
    Auth: _reason_encoder(0xF0),
}
