"""MQTT constants: packet types, reason codes and the MQTT 5 property table (spec 2.2.2.2)."""

from __future__ import annotations

from enum import IntEnum
from typing import Final, NamedTuple

__all__ = [
    "ALLOWED_REASON_CODES",
    "PROPERTIES",
    "V3_SUBACK_RETURN_CODES",
    "WILL",
    "ConnackV3",
    "PacketType",
    "PropertyId",
    "PropertySpec",
    "PropertyType",
    "ReasonCode",
]


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class ReasonCode(IntEnum):
    """Every MQTT 5 reason code by its spec name; codes shared by several names are aliases."""

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL = 0x04
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USERNAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class ConnackV3(IntEnum):
    """MQTT 3.1 / 3.1.1 CONNACK return codes."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


class PropertyId(IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class PropertyType(IntEnum):
    """Data type of a property value (spec 1.5)."""

    BYTE = 1
    TWO_BYTE_INT = 2
    FOUR_BYTE_INT = 3
    VARINT = 4
    UTF8_STRING = 5
    BINARY = 6
    STRING_PAIR = 7


# Pseudo packet type for the Will Properties of a CONNECT (no real packet type is 0).
WILL: Final = 0


class PropertySpec(NamedTuple):
    type: PropertyType
    # Packet types (and WILL) the property may appear in.
    allowed: frozenset[int]
    # Packet types in which it may appear more than once.
    repeatable: frozenset[int]
    # Values the property may take, when the spec restricts them beyond its data type (None: any).
    # Zero is excluded where the spec says a zero value is a Protocol Error.
    values: range | None = None


_P = PacketType
_T = PropertyType
_NONE: Final[frozenset[int]] = frozenset()
_BOOL = range(2)


def _spec(
    t: PropertyType, *allowed: int, repeatable: bool = False, values: range | None = None
) -> PropertySpec:
    where = frozenset(int(a) for a in allowed)
    return PropertySpec(t, where, where if repeatable else _NONE, values)


PROPERTIES: Final[dict[int, PropertySpec]] = {
    PropertyId.PAYLOAD_FORMAT_INDICATOR: _spec(_T.BYTE, _P.PUBLISH, WILL, values=_BOOL),
    PropertyId.MESSAGE_EXPIRY_INTERVAL: _spec(_T.FOUR_BYTE_INT, _P.PUBLISH, WILL),
    PropertyId.CONTENT_TYPE: _spec(_T.UTF8_STRING, _P.PUBLISH, WILL),
    PropertyId.RESPONSE_TOPIC: _spec(_T.UTF8_STRING, _P.PUBLISH, WILL),
    PropertyId.CORRELATION_DATA: _spec(_T.BINARY, _P.PUBLISH, WILL),
    PropertyId.SUBSCRIPTION_IDENTIFIER: PropertySpec(
        _T.VARINT,
        frozenset((_P.PUBLISH, _P.SUBSCRIBE)),
        frozenset((_P.PUBLISH,)),
        range(1, 268_435_456),
    ),
    PropertyId.SESSION_EXPIRY_INTERVAL: _spec(_T.FOUR_BYTE_INT, _P.CONNECT, _P.CONNACK, _P.DISCONNECT),
    PropertyId.ASSIGNED_CLIENT_IDENTIFIER: _spec(_T.UTF8_STRING, _P.CONNACK),
    PropertyId.SERVER_KEEP_ALIVE: _spec(_T.TWO_BYTE_INT, _P.CONNACK),
    PropertyId.AUTHENTICATION_METHOD: _spec(_T.UTF8_STRING, _P.CONNECT, _P.CONNACK, _P.AUTH),
    PropertyId.AUTHENTICATION_DATA: _spec(_T.BINARY, _P.CONNECT, _P.CONNACK, _P.AUTH),
    PropertyId.REQUEST_PROBLEM_INFORMATION: _spec(_T.BYTE, _P.CONNECT, values=_BOOL),
    PropertyId.WILL_DELAY_INTERVAL: _spec(_T.FOUR_BYTE_INT, WILL),
    PropertyId.REQUEST_RESPONSE_INFORMATION: _spec(_T.BYTE, _P.CONNECT, values=_BOOL),
    PropertyId.RESPONSE_INFORMATION: _spec(_T.UTF8_STRING, _P.CONNACK),
    PropertyId.SERVER_REFERENCE: _spec(_T.UTF8_STRING, _P.CONNACK, _P.DISCONNECT),
    PropertyId.REASON_STRING: _spec(
        _T.UTF8_STRING,
        _P.CONNACK,
        _P.PUBACK,
        _P.PUBREC,
        _P.PUBREL,
        _P.PUBCOMP,
        _P.SUBACK,
        _P.UNSUBACK,
        _P.DISCONNECT,
        _P.AUTH,
    ),
    PropertyId.RECEIVE_MAXIMUM: _spec(_T.TWO_BYTE_INT, _P.CONNECT, _P.CONNACK, values=range(1, 65536)),
    PropertyId.TOPIC_ALIAS_MAXIMUM: _spec(_T.TWO_BYTE_INT, _P.CONNECT, _P.CONNACK),
    PropertyId.TOPIC_ALIAS: _spec(_T.TWO_BYTE_INT, _P.PUBLISH, values=range(1, 65536)),
    PropertyId.MAXIMUM_QOS: _spec(_T.BYTE, _P.CONNACK, values=_BOOL),
    PropertyId.RETAIN_AVAILABLE: _spec(_T.BYTE, _P.CONNACK, values=_BOOL),
    PropertyId.USER_PROPERTY: _spec(
        _T.STRING_PAIR,
        _P.CONNECT,
        _P.CONNACK,
        _P.PUBLISH,
        WILL,
        _P.PUBACK,
        _P.PUBREC,
        _P.PUBREL,
        _P.PUBCOMP,
        _P.SUBSCRIBE,
        _P.SUBACK,
        _P.UNSUBSCRIBE,
        _P.UNSUBACK,
        _P.DISCONNECT,
        _P.AUTH,
        repeatable=True,
    ),
    PropertyId.MAXIMUM_PACKET_SIZE: _spec(_T.FOUR_BYTE_INT, _P.CONNECT, _P.CONNACK, values=range(1, 1 << 32)),
    PropertyId.WILDCARD_SUBSCRIPTION_AVAILABLE: _spec(_T.BYTE, _P.CONNACK, values=_BOOL),
    PropertyId.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _spec(_T.BYTE, _P.CONNACK, values=_BOOL),
    PropertyId.SHARED_SUBSCRIPTION_AVAILABLE: _spec(_T.BYTE, _P.CONNACK, values=_BOOL),
}

# Reason codes each MQTT 5 packet type may carry (spec 2.4 and each packet's reason code table).
_R = ReasonCode
_PUBACK_CODES = frozenset(
    (
        _R.SUCCESS,
        _R.NO_MATCHING_SUBSCRIBERS,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
    )
)
_PUBREL_CODES = frozenset((_R.SUCCESS, _R.PACKET_IDENTIFIER_NOT_FOUND))

ALLOWED_REASON_CODES: Final[dict[int, frozenset[int]]] = {
    _P.CONNACK: frozenset(
        (
            _R.SUCCESS,
            *range(0x80, 0x8D),
            _R.TOPIC_NAME_INVALID,
            _R.PACKET_TOO_LARGE,
            _R.QUOTA_EXCEEDED,
            _R.PAYLOAD_FORMAT_INVALID,
            _R.RETAIN_NOT_SUPPORTED,
            _R.QOS_NOT_SUPPORTED,
            _R.USE_ANOTHER_SERVER,
            _R.SERVER_MOVED,
            _R.CONNECTION_RATE_EXCEEDED,
        )
    )
    - {_R.SERVER_SHUTTING_DOWN},
    _P.PUBACK: _PUBACK_CODES,
    _P.PUBREC: _PUBACK_CODES,
    _P.PUBREL: _PUBREL_CODES,
    _P.PUBCOMP: _PUBREL_CODES,
    _P.SUBACK: frozenset(
        (
            _R.GRANTED_QOS_0,
            _R.GRANTED_QOS_1,
            _R.GRANTED_QOS_2,
            _R.UNSPECIFIED_ERROR,
            _R.IMPLEMENTATION_SPECIFIC_ERROR,
            _R.NOT_AUTHORIZED,
            _R.TOPIC_FILTER_INVALID,
            _R.PACKET_IDENTIFIER_IN_USE,
            _R.QUOTA_EXCEEDED,
            _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        )
    ),
    _P.UNSUBACK: frozenset(
        (
            _R.SUCCESS,
            _R.NO_SUBSCRIPTION_EXISTED,
            _R.UNSPECIFIED_ERROR,
            _R.IMPLEMENTATION_SPECIFIC_ERROR,
            _R.NOT_AUTHORIZED,
            _R.TOPIC_FILTER_INVALID,
            _R.PACKET_IDENTIFIER_IN_USE,
        )
    ),
    _P.DISCONNECT: frozenset(
        (
            _R.NORMAL_DISCONNECTION,
            _R.DISCONNECT_WITH_WILL,
            _R.UNSPECIFIED_ERROR,
            _R.MALFORMED_PACKET,
            _R.PROTOCOL_ERROR,
            _R.IMPLEMENTATION_SPECIFIC_ERROR,
            _R.NOT_AUTHORIZED,
            _R.SERVER_BUSY,
            _R.SERVER_SHUTTING_DOWN,
            *range(0x8D, 0x91),
            *range(0x93, 0xA3),
        )
    ),
    _P.AUTH: frozenset((_R.SUCCESS, _R.CONTINUE_AUTHENTICATION, _R.REAUTHENTICATE)),
}

# MQTT 3.1.1 SUBACK return codes: granted QoS 0/1/2 or failure.
V3_SUBACK_RETURN_CODES: Final[frozenset[int]] = frozenset((0x00, 0x01, 0x02, 0x80))
