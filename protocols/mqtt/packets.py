"""MQTT control packets as plain dataclasses, shared by MQTT 3.1, 3.1.1 and 5.

Properties are an ordered list of ``(property id, value)`` so that re-encoding a decoded packet is byte
identical and user properties keep their order and repeats. Value types: ints for byte/two-/four-byte and
variable byte integers, ``str`` for UTF-8 strings, ``bytes`` for binary data and ``(key, value)`` tuples of
``str`` for user properties. On MQTT 3.x every ``properties`` list is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias, cast

from .constants import PacketType, PropertyId

__all__ = [
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "Pingreq",
    "Pingresp",
    "Properties",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Suback",
    "Subscribe",
    "Subscription",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "get_property",
    "user_properties",
]

Properties: TypeAlias = list[tuple[int, object]]


def get_property(props: Properties, pid: int, default: object = None) -> object:
    """The value of the first property ``pid`` in ``props``, or ``default``."""
    for p, value in props:
        if p == pid:
            return value
    return default


def user_properties(props: Properties) -> list[tuple[str, str]]:
    """All user properties, in order, repeats included."""
    uid = PropertyId.USER_PROPERTY
    return [cast(tuple[str, str], value) for p, value in props if p == uid]


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Connect:
    packet_type: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str = ""
    protocol_level: int = 4  # 3 = MQTT 3.1 ("MQIsdp"), 4 = 3.1.1, 5 = 5.0
    protocol_name: str = "MQTT"
    clean_start: bool = True
    keepalive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Connack:
    packet_type: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    # On 3.x the CONNACK return code (ConnackV3), on 5 the reason code.
    reason_code: int = 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Publish:
    packet_type: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # None exactly when qos == 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Puback:
    packet_type: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Pubrec:
    packet_type: ClassVar[PacketType] = PacketType.PUBREC
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Pubrel:
    packet_type: ClassVar[PacketType] = PacketType.PUBREL
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Pubcomp:
    packet_type: ClassVar[PacketType] = PacketType.PUBCOMP
    packet_id: int
    reason_code: int = 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Subscription:
    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    packet_type: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: list[Subscription]
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Suback:
    packet_type: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: list[int]
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Unsubscribe:
    packet_type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: list[str]
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Unsuback:
    packet_type: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)  # always empty on 3.x
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Pingreq:
    packet_type: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(slots=True)
class Pingresp:
    packet_type: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(slots=True)
class Disconnect:
    packet_type: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: Properties = field(default_factory=list)


@dataclass(slots=True)
class Auth:
    packet_type: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = 0
    properties: Properties = field(default_factory=list)


Packet: TypeAlias = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)
