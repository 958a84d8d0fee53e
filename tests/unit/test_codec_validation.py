"""One case per validation rule of the decoder, on hand-written bytes: exception class and reason code."""

from __future__ import annotations

import pytest

from ferryman.protocols.mqtt import (
    Connect,
    MalformedPacket,
    MqttError,
    ProtocolError,
    Publish,
    TopicFilterInvalid,
    TopicNameInvalid,
    UnsupportedProtocolVersion,
    decode,
    encode,
    publish_fields,
)

M, P, V = MalformedPacket, ProtocolError, UnsupportedProtocolVersion
TN, TF = TopicNameInvalid, TopicFilterInvalid


def s(text: str | bytes) -> bytes:
    """A length-prefixed MQTT string from text or raw bytes."""
    b = text.encode() if isinstance(text, str) else text
    return len(b).to_bytes(2, "big") + b


def props(*items: bytes) -> bytes:
    """An MQTT 5 property block of raw (id + value) items."""
    block = b"".join(items)
    assert len(block) < 128
    return bytes((len(block),)) + block


def connect(
    name: bytes = b"MQTT",
    level: int = 4,
    flags: int = 0x02,
    properties: bytes = b"",
    payload: bytes = b"\x00\x01c",
) -> bytes:
    return s(name) + bytes((level, flags)) + b"\x00\x3c" + properties + payload


# (first byte, body, version, exception class, reason code)
Case = tuple[int, bytes, int, type[MqttError], int]

CASES: dict[str, Case] = {
    # fixed header
    "reserved-type-0": (0x00, b"", 4, M, 0x81),
    "auth-before-mqtt5": (0xF0, b"", 4, M, 0x81),
    "pubrel-flags-0": (0x60, b"\x00\x01", 4, M, 0x81),
    "subscribe-flags-0": (0x80, b"\x00\x01" + s("a") + b"\x00", 4, M, 0x81),
    "unsubscribe-flags-0": (0xA0, b"\x00\x01" + s("a"), 4, M, 0x81),
    "puback-flags-2": (0x42, b"\x00\x01", 4, M, 0x81),
    "connect-flags-1": (0x11, connect(), 4, M, 0x81),
    "pingreq-flags-1": (0xC1, b"", 4, M, 0x81),
    "disconnect-flags-2-v5": (0xE2, b"", 5, M, 0x81),
    # PUBLISH
    "publish-qos-3": (0x36, s("a") + b"\x00\x01", 4, M, 0x81),
    "publish-dup-qos-0": (0x38, s("a"), 4, M, 0x81),
    "publish-packet-id-0": (0x32, s("a") + b"\x00\x00", 4, P, 0x82),
    "publish-plus-wildcard": (0x30, s("a/+"), 4, TN, 0x90),
    "publish-hash-wildcard-v5": (0x30, s("a/#") + b"\x00", 5, TN, 0x90),
    "publish-empty-topic-v311": (0x30, s(""), 4, P, 0x82),
    "publish-empty-topic-no-alias-v5": (0x30, s("") + b"\x00", 5, P, 0x82),
    "publish-topic-alias-0": (0x30, s("a") + props(b"\x23\x00\x00"), 5, P, 0x94),
    "publish-topic-truncated-length": (0x30, b"\x00", 4, M, 0x81),
    "publish-topic-overruns": (0x30, b"\x00\x05ab", 4, M, 0x81),
    "publish-packet-id-truncated": (0x32, s("a") + b"\x00", 4, M, 0x81),
    "publish-property-length-missing-v5": (0x30, s("a"), 5, M, 0x81),
    # UTF-8 strings (spec 1.5.4)
    "utf8-invalid-byte": (0x30, s(b"a\xff"), 4, M, 0x81),
    "utf8-surrogate": (0x30, s(b"\xed\xa0\x80"), 4, M, 0x81),
    "utf8-overlong": (0x30, s(b"\xc0\xaf"), 4, M, 0x81),
    "utf8-truncated-sequence": (0x30, s(b"a\xe2\x82"), 4, M, 0x81),
    "utf8-null": (0x30, s(b"a\x00b"), 4, M, 0x81),
    "utf8-null-in-user-property": (0x30, s("a") + props(b"\x26" + s("k") + s(b"\x00")), 5, M, 0x81),
    # MQTT 5 properties
    "property-length-past-end": (0x30, s("a") + b"\x05\x23\x00\x01", 5, M, 0x81),
    "property-length-5-byte-varint": (0x30, s("a") + b"\xff\xff\xff\xff\x7f", 5, M, 0x81),
    "property-length-not-minimal": (0x30, s("a") + b"\x80\x00", 5, M, 0x81),
    "property-value-past-block": (0x30, s("a") + props(b"\x02\x00") + b"\x00\x00", 5, M, 0x81),
    "property-unknown-id": (0x30, s("a") + props(b"\x7f\x00"), 5, M, 0x81),
    "property-not-allowed-in-publish": (0x30, s("a") + props(b"\x11\x00\x00\x00\x01"), 5, M, 0x81),
    "property-duplicate": (0x30, s("a") + props(b"\x03" + s("x"), b"\x03" + s("y")), 5, P, 0x82),
    "subscription-identifier-0": (0x30, s("a") + props(b"\x0b\x00"), 5, P, 0x82),
    "subscription-identifier-varint-too-long": (
        0x30,
        s("a") + props(b"\x0b\x80\x80\x80\x80\x01"),
        5,
        M,
        0x81,
    ),
    "payload-format-indicator-2": (0x30, s("a") + props(b"\x01\x02"), 5, P, 0x82),
    "response-topic-wildcard": (0x30, s("a") + props(b"\x08" + s("r/+")), 5, P, 0x82),
    "reason-string-not-allowed-in-publish": (0x30, s("a") + props(b"\x1f" + s("r")), 5, M, 0x81),
    # acks
    "puback-packet-id-0": (0x40, b"\x00\x00", 4, P, 0x82),
    "puback-truncated": (0x40, b"\x00", 5, M, 0x81),
    "puback-trailing-v311": (0x40, b"\x00\x01\x00", 4, M, 0x81),
    "puback-trailing-after-properties-v5": (0x40, b"\x00\x01\x10\x00\x00", 5, M, 0x81),
    "puback-reason-not-allowed-v5": (0x40, b"\x00\x01\x92", 5, M, 0x81),
    "pubrel-reason-not-allowed-v5": (0x62, b"\x00\x01\x10", 5, M, 0x81),
    "puback-property-not-allowed": (0x40, b"\x00\x01\x00" + props(b"\x23\x00\x01"), 5, M, 0x81),
    # SUBSCRIBE
    "subscribe-packet-id-0": (0x82, b"\x00\x00" + s("a") + b"\x00", 4, P, 0x82),
    "subscribe-no-filters-v311": (0x82, b"\x00\x01", 4, P, 0x82),
    "subscribe-no-filters-v5": (0x82, b"\x00\x01\x00", 5, P, 0x82),
    "subscribe-options-missing": (0x82, b"\x00\x01" + s("a"), 4, M, 0x81),
    "subscribe-filter-hash-not-last": (0x82, b"\x00\x01" + s("a/#/b") + b"\x00", 4, TF, 0x8F),
    "subscribe-filter-partial-plus": (0x82, b"\x00\x01" + s("a+") + b"\x00", 4, TF, 0x8F),
    "subscribe-filter-empty": (0x82, b"\x00\x01\x00" + s("") + b"\x00", 5, TF, 0x8F),
    "subscribe-shared-empty-name": (0x82, b"\x00\x01\x00" + s("$share//a") + b"\x00", 5, TF, 0x8F),
    "subscribe-shared-wildcard-name": (0x82, b"\x00\x01\x00" + s("$share/g+/a") + b"\x00", 5, TF, 0x8F),
    "subscribe-shared-no-filter": (0x82, b"\x00\x01\x00" + s("$share/g") + b"\x00", 5, TF, 0x8F),
    "subscribe-shared-no-local": (0x82, b"\x00\x01\x00" + s("$share/g/a") + b"\x04", 5, P, 0x82),
    "subscribe-qos-3-v311": (0x82, b"\x00\x01" + s("a") + b"\x03", 4, M, 0x81),
    "subscribe-qos-3-v5": (0x82, b"\x00\x01\x00" + s("a") + b"\x03", 5, P, 0x82),
    "subscribe-reserved-bits-v311": (0x82, b"\x00\x01" + s("a") + b"\x04", 4, M, 0x81),
    "subscribe-reserved-bits-v5": (0x82, b"\x00\x01\x00" + s("a") + b"\x40", 5, M, 0x81),
    "subscribe-retain-handling-3": (0x82, b"\x00\x01\x00" + s("a") + b"\x30", 5, P, 0x82),
    "subscribe-subscription-identifier-twice": (
        0x82,
        b"\x00\x01" + props(b"\x0b\x01", b"\x0b\x02") + s("a") + b"\x00",
        5,
        P,
        0x82,
    ),
    # UNSUBSCRIBE
    "unsubscribe-no-filters": (0xA2, b"\x00\x01", 4, P, 0x82),
    "unsubscribe-no-filters-v5": (0xA2, b"\x00\x01\x00", 5, P, 0x82),
    "unsubscribe-invalid-filter": (0xA2, b"\x00\x01" + s("a/#/b"), 4, TF, 0x8F),
    "unsubscribe-packet-id-0": (0xA2, b"\x00\x00" + s("a"), 4, P, 0x82),
    # SUBACK / UNSUBACK
    "suback-return-code-3-v311": (0x90, b"\x00\x01\x03", 4, M, 0x81),
    "suback-reason-not-allowed-v5": (0x90, b"\x00\x01\x00\x10", 5, M, 0x81),
    "suback-no-codes": (0x90, b"\x00\x01", 4, P, 0x82),
    "unsuback-trailing-v311": (0xB0, b"\x00\x01\x00", 4, M, 0x81),
    "unsuback-no-codes-v5": (0xB0, b"\x00\x01\x00", 5, P, 0x82),
    # PINGREQ / PINGRESP / DISCONNECT / AUTH
    "pingreq-with-body": (0xC0, b"\x00", 4, M, 0x81),
    "pingresp-with-body": (0xD0, b"\x00", 5, M, 0x81),
    "disconnect-body-v311": (0xE0, b"\x00", 4, M, 0x81),
    "disconnect-reason-not-allowed": (0xE0, b"\x01", 5, M, 0x81),
    "disconnect-trailing": (0xE0, b"\x00\x00\x00", 5, M, 0x81),
    "disconnect-property-not-allowed": (0xE0, b"\x00" + props(b"\x12" + s("id")), 5, M, 0x81),
    "auth-reason-without-property-length": (0xF0, b"\x18", 5, M, 0x81),
    "auth-reason-not-allowed": (0xF0, b"\x01\x00", 5, M, 0x81),
    # CONNACK
    "connack-reserved-flags": (0x20, b"\x02\x00", 4, M, 0x81),
    "connack-return-code-6-v311": (0x20, b"\x00\x06", 4, M, 0x81),
    "connack-trailing-v311": (0x20, b"\x00\x00\x00", 4, M, 0x81),
    "connack-truncated-v5": (0x20, b"\x00\x00", 5, M, 0x81),
    "connack-reason-not-allowed-v5": (0x20, b"\x00\x01\x00", 5, M, 0x81),
    "connack-session-present-on-failure": (0x20, b"\x01\x05", 4, P, 0x82),
    "connack-receive-maximum-0": (0x20, b"\x00\x00" + props(b"\x21\x00\x00"), 5, P, 0x82),
    "connack-maximum-qos-2": (0x20, b"\x00\x00" + props(b"\x24\x02"), 5, P, 0x82),
    # CONNECT
    "connect-mqtt-level-3": (0x10, connect(b"MQTT", 3), 4, V, 0x84),
    "connect-mqisdp-level-4": (0x10, connect(b"MQIsdp", 4), 4, V, 0x84),
    "connect-level-6": (0x10, connect(b"MQTT", 6), 5, V, 0x84),
    "connect-unknown-name": (0x10, connect(b"MQTX", 4), 4, V, 0x84),
    "connect-name-truncated": (0x10, b"\x00\x04MQ", 4, M, 0x81),
    "connect-level-missing": (0x10, s("MQTT"), 4, M, 0x81),
    "connect-reserved-flag": (0x10, connect(flags=0x03), 4, M, 0x81),
    "connect-will-qos-3": (0x10, connect(flags=0x1E, payload=s("c") + s("w") + s("x")), 4, M, 0x81),
    "connect-will-qos-without-will": (0x10, connect(flags=0x0A), 4, M, 0x81),
    "connect-will-retain-without-will": (0x10, connect(flags=0x22), 4, M, 0x81),
    "connect-password-without-username-v311": (
        0x10,
        connect(flags=0x42, payload=s("c") + s("pw")),
        4,
        M,
        0x81,
    ),
    "connect-empty-client-id-persistent-v311": (0x10, connect(flags=0x00, payload=s("")), 4, P, 0x85),
    "connect-empty-client-id-persistent-v31": (0x10, connect(b"MQIsdp", 3, 0x00, payload=s("")), 4, P, 0x85),
    "connect-will-topic-wildcard": (
        0x10,
        connect(flags=0x06, payload=s("c") + s("w/#") + s("x")),
        4,
        TN,
        0x90,
    ),
    "connect-will-topic-empty": (0x10, connect(flags=0x06, payload=s("c") + s("") + s("x")), 4, TN, 0x90),
    "connect-client-id-missing": (0x10, connect(payload=b""), 4, M, 0x81),
    "connect-username-missing": (0x10, connect(flags=0x82), 4, M, 0x81),
    "connect-trailing": (0x10, connect(payload=s("c") + b"\x00"), 4, M, 0x81),
    "connect-receive-maximum-0": (0x10, connect(level=5, properties=props(b"\x21\x00\x00")), 5, P, 0x82),
    "connect-maximum-packet-size-0": (
        0x10,
        connect(level=5, properties=props(b"\x27\x00\x00\x00\x00")),
        5,
        P,
        0x82,
    ),
    "connect-duplicate-session-expiry": (
        0x10,
        connect(level=5, properties=props(b"\x11\x00\x00\x00\x01", b"\x11\x00\x00\x00\x02")),
        5,
        P,
        0x82,
    ),
    "connect-will-delay-in-connect-properties": (
        0x10,
        connect(level=5, properties=props(b"\x18\x00\x00\x00\x01")),
        5,
        M,
        0x81,
    ),
    "connect-topic-alias-in-will-properties": (
        0x10,
        connect(
            level=5, flags=0x06, properties=props(), payload=s("c") + props(b"\x23\x00\x01") + s("w") + s("x")
        ),
        5,
        M,
        0x81,
    ),
    "connect-v5-properties-missing": (0x10, connect(level=5), 5, M, 0x81),
}


@pytest.mark.parametrize(("first", "body", "version", "exc", "code"), list(CASES.values()), ids=list(CASES))
def test_rejected(first: int, body: bytes, version: int, exc: type[MqttError], code: int) -> None:
    with pytest.raises(MqttError) as info:
        decode(first, body, version)
    assert type(info.value) is exc, info.value
    assert info.value.reason_code == code
    assert str(info.value)  # says what is wrong


PUBLISH_CASES = {k: v for k, v in CASES.items() if v[0] >> 4 == 3}


@pytest.mark.parametrize(
    ("first", "body", "version", "exc", "code"), list(PUBLISH_CASES.values()), ids=list(PUBLISH_CASES)
)
def test_publish_fields_rejects_like_decode(
    first: int, body: bytes, version: int, exc: type[MqttError], code: int
) -> None:
    buf = b"\x30\x00" + body + b"\xc0\x00"  # something before and after the packet in the buffer
    with pytest.raises(MqttError) as info:
        publish_fields(buf, 2, 2 + len(body), first, version)[:2]
    assert type(info.value) is exc
    assert info.value.reason_code == code


# The spec allows these; each is the near miss of a rule above.
ACCEPTED: dict[str, tuple[int, bytes, int]] = {
    "publish-empty-topic-with-alias-v5": (0x30, s("") + props(b"\x23\x00\x07"), 5),
    "publish-subscription-identifier-repeated": (0x30, s("a") + props(b"\x0b\x01", b"\x0b\x02"), 5),
    "publish-user-property-repeated": (
        0x30,
        s("a") + props(b"\x26" + s("k") + s("v"), b"\x26" + s("k") + s("v")),
        5,
    ),
    "publish-dup-qos-1": (0x3A, s("a") + b"\x00\x01", 4),
    "publish-bom-kept": (0x30, s(b"\xef\xbb\xbfa"), 4),
    "connect-password-without-username-v5": (
        0x10,
        connect(level=5, flags=0x42, properties=props(), payload=s("c") + s("pw")),
        5,
    ),
    "connect-empty-client-id-persistent-v5": (
        0x10,
        connect(level=5, flags=0x00, properties=props(), payload=s("")),
        5,
    ),
    "connect-empty-client-id-clean-v311": (0x10, connect(flags=0x02, payload=s("")), 4),
    "connect-mqisdp-3": (0x10, connect(b"MQIsdp", 3), 4),
    "subscribe-shared-syntax-not-checked-v311": (0x82, b"\x00\x01" + s("$share//a") + b"\x00", 4),
    "puback-v5-short": (0x40, b"\x00\x01", 5),
    "puback-v5-reason-only": (0x40, b"\x00\x01\x10", 5),
    "pubrel-v5-reason-only": (0x62, b"\x00\x01\x92", 5),
    "disconnect-v5-reason-only": (0xE0, b"\x04", 5),
    "disconnect-v5-empty": (0xE0, b"", 5),
    "auth-v5-empty": (0xF0, b"", 5),
}


@pytest.mark.parametrize(("first", "body", "version"), list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_accepted(first: int, body: bytes, version: int) -> None:
    packet = decode(first, body, version)
    if isinstance(packet, Publish):
        assert publish_fields(body, 0, len(body), first, version)[:2][0] == packet.topic


def test_short_forms_decode_to_defaults() -> None:
    assert decode(0x40, b"\x00\x01", 5) == decode(0x40, b"\x00\x01\x00\x00", 5)
    assert decode(0xE0, b"", 5) == decode(0xE0, b"\x00\x00", 5) == decode(0xE0, b"\x00", 5)


def test_publish_fields_returns_alias() -> None:
    body = s("") + props(b"\x23\x00\x07") + b"payload"
    assert publish_fields(body, 0, len(body), 0x30, 5)[:2] == ("", 7)
    body = s("a/b") + b"\x00\x09" + props(b"\x26" + s("k") + s("v")) + b"payload"
    assert publish_fields(body, 0, len(body), 0x32, 5)[:2] == ("a/b", None)
    body = s("a/b") + b"payload"
    assert publish_fields(body, 0, len(body), 0x30, 4)[:2] == ("a/b", None)


def test_encode_rejects_strings_over_65535_bytes() -> None:
    with pytest.raises(ValueError, match="65535"):
        encode(Connect("é" * 40000), 4)
    with pytest.raises(ValueError, match="65535"):
        encode(Publish("t", properties=[(3, "x" * 65536)]), 5)


def test_bom_is_not_stripped() -> None:
    packet = decode(0x30, s(b"\xef\xbb\xbfa"), 4)
    assert isinstance(packet, Publish)
    assert packet.topic == "\ufeffa"
