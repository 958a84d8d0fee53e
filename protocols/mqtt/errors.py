"""Errors raised by the MQTT codec. Each carries the MQTT 5 reason code a server answers it with."""

from __future__ import annotations

__all__ = [
    "MalformedPacket",
    "MessageRateTooHigh",
    "MqttError",
    "PacketTooLarge",
    "ProtocolError",
    "TooManyElements",
    "TopicFilterInvalid",
    "TopicNameInvalid",
    "UnsupportedProtocolVersion",
]


class MqttError(Exception):
    """A packet or stream that cannot be accepted. ``reason_code`` is the MQTT 5 reason code for it."""

    reason_code: int = 0x81

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(MqttError):
    """0x81: the bytes do not form a packet as the spec defines it."""

    reason_code = 0x81


class ProtocolError(MqttError):
    """0x82: a well-formed packet that the spec forbids here (wrong state, duplicate property, ...)."""

    reason_code = 0x82


class UnsupportedProtocolVersion(MqttError):
    """0x84 (CONNACK 0x01 on 3.1.1): a CONNECT with a protocol name or level the proxy does not speak."""

    reason_code = 0x84


class PacketTooLarge(MqttError):
    """0x95: remaining length beyond the configured maximum packet size."""

    reason_code = 0x95


class TooManyElements(PacketTooLarge):
    """0x95: more user properties, or topic filters, than the listener's cap (``max_user_properties``,
    ``max_topic_filters``). The spec sets no such limit; the gateway does so that one packet costs as much
    work as its first few dozen elements, not as its hundreds of thousands. Of the codes a CONNACK and a
    DISCONNECT may carry, Packet too large says it best: the packet is bigger, in elements, than this
    receiver takes, and sending it again will not help (0x81 / 0x82 would call a valid packet invalid)."""

    reason_code = 0x95


class TopicNameInvalid(ProtocolError):
    """0x90: a PUBLISH (or will) topic name that is not allowed, e.g. one with wildcards."""

    reason_code = 0x90


class TopicFilterInvalid(ProtocolError):
    """0x8F: a SUBSCRIBE or UNSUBSCRIBE topic filter that is not valid."""

    reason_code = 0x8F


class MessageRateTooHigh(MqttError):
    """0x96: the client publishes faster than its listener's rate limit (rate_limit_action = "disconnect")."""

    reason_code = 0x96
