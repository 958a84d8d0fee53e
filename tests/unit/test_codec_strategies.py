"""Hypothesis strategies for valid MQTT packets (imported by the codec tests; holds no tests itself)."""

from __future__ import annotations

from hypothesis import strategies as st

from ferryman.protocols.mqtt.constants import (
    ALLOWED_REASON_CODES,
    PROPERTIES,
    V3_SUBACK_RETURN_CODES,
    WILL,
    PacketType,
    PropertyId,
    PropertyType,
)
from ferryman.protocols.mqtt.framing import Framer
from ferryman.protocols.mqtt.packets import (
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

__all__ = ["filters", "packets", "properties", "publishes", "shared_filters", "split", "texts", "topic_names"]

# Valid MQTT strings: any code point but U+0000 and surrogates.
_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
texts = st.text(_CHARS, max_size=12)
topic_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#"), min_size=1, max_size=20)
_level = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#/"), max_size=6)


@st.composite
def _plain_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(st.just("+"), _level), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels)
    return f if f else "#"


def filters(v5: bool) -> st.SearchStrategy[str]:
    """Valid topic filters; on MQTT 5 no accidental ``$share/`` prefix (see ``shared_filters``)."""
    plain = _plain_filters()
    if v5:
        return plain.filter(lambda f: not f.startswith("$share/"))
    return plain


shared_filters = st.builds(
    lambda name, f: f"$share/{name}/{f}",
    st.text(st.characters(codec="utf-8", exclude_characters="\x00+#/"), min_size=1, max_size=5),
    _plain_filters(),
)


def _value(pid: int) -> st.SearchStrategy[object]:
    spec = PROPERTIES[pid]
    if pid == PropertyId.RESPONSE_TOPIC:
        return topic_names
    if spec.values is not None:
        return st.integers(spec.values.start, spec.values.stop - 1)
    t = spec.type
    if t is PropertyType.BYTE:
        return st.integers(0, 255)
    if t is PropertyType.TWO_BYTE_INT:
        return st.integers(0, 0xFFFF)
    if t is PropertyType.FOUR_BYTE_INT:
        return st.integers(0, 0xFFFFFFFF)
    if t is PropertyType.VARINT:
        return st.integers(0, 268_435_455)
    if t is PropertyType.UTF8_STRING:
        return texts
    if t is PropertyType.BINARY:
        return st.binary(max_size=12)
    return st.tuples(texts, texts)


@st.composite
def properties(draw: st.DrawFn, where: int) -> Properties:
    """A valid property list for packet type ``where`` (or WILL): allowed ids, repeats only where allowed."""
    allowed = sorted(pid for pid, spec in PROPERTIES.items() if where in spec.allowed)
    ids = draw(st.lists(st.sampled_from(allowed), max_size=6))
    out: Properties = []
    seen: set[int] = set()
    for pid in ids:
        if pid in seen and where not in PROPERTIES[pid].repeatable:
            continue
        seen.add(pid)
        out.append((pid, draw(_value(pid))))
    return out


def _props(v5: bool, where: int) -> st.SearchStrategy[Properties]:
    return properties(where) if v5 else st.just([])


_packet_ids = st.integers(1, 0xFFFF)


@st.composite
def _connect(draw: st.DrawFn, v5: bool) -> Connect:
    name, level = ("MQTT", 5) if v5 else draw(st.sampled_from([("MQTT", 4), ("MQIsdp", 3)]))
    client_id = draw(texts)
    clean_start = draw(st.booleans()) if client_id or v5 else True
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=8)) if username is not None or v5 else None
    will = None
    if draw(st.booleans()):
        will = Will(
            draw(topic_names),
            draw(st.binary(max_size=16)),
            draw(st.integers(0, 2)),
            draw(st.booleans()),
            draw(_props(v5, WILL)),
        )
    return Connect(
        client_id,
        level,
        name,
        clean_start,
        draw(st.integers(0, 0xFFFF)),
        username,
        password,
        will,
        draw(_props(v5, PacketType.CONNECT)),
    )


@st.composite
def _connack(draw: st.DrawFn, v5: bool) -> Connack:
    codes = ALLOWED_REASON_CODES[PacketType.CONNACK] if v5 else range(6)
    code = draw(st.sampled_from(sorted(codes)))
    session_present = draw(st.booleans()) if code == 0 else False
    return Connack(session_present, code, draw(_props(v5, PacketType.CONNACK)))


@st.composite
def publishes(draw: st.DrawFn, v5: bool) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(_props(v5, PacketType.PUBLISH))
    has_alias = any(pid == PropertyId.TOPIC_ALIAS for pid, _ in props)
    topic = draw(st.just("") | topic_names) if has_alias else draw(topic_names)
    return Publish(
        topic,
        draw(st.binary(max_size=64)),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(_packet_ids) if qos else None,
        props,
    )


def _ack(cls: type[Puback | Pubrec | Pubrel | Pubcomp], v5: bool) -> st.SearchStrategy[Packet]:
    ptype = cls.packet_type
    if not v5:
        return st.builds(cls, _packet_ids)
    return st.builds(
        cls, _packet_ids, st.sampled_from(sorted(ALLOWED_REASON_CODES[ptype])), properties(ptype)
    )


def _subscription(v5: bool) -> st.SearchStrategy[Subscription]:
    if not v5:
        return st.builds(Subscription, filters(False), st.integers(0, 2))
    plain = st.builds(
        Subscription, filters(True), st.integers(0, 2), st.booleans(), st.booleans(), st.integers(0, 2)
    )
    shared = st.builds(
        Subscription, shared_filters, st.integers(0, 2), st.just(False), st.booleans(), st.integers(0, 2)
    )
    return plain | shared


def _reason_codes(ptype: PacketType) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted(ALLOWED_REASON_CODES[ptype]))


def packets(v5: bool) -> st.SearchStrategy[Packet]:
    """Any valid packet for MQTT 5 (``v5``) or 3.1.1 (CONNECT may also be 3.1)."""
    subscribe = st.builds(
        Subscribe,
        _packet_ids,
        st.lists(_subscription(v5), min_size=1, max_size=4),
        _props(v5, PacketType.SUBSCRIBE),
    )
    suback_codes = _reason_codes(PacketType.SUBACK) if v5 else st.sampled_from(sorted(V3_SUBACK_RETURN_CODES))
    suback = st.builds(
        Suback, _packet_ids, st.lists(suback_codes, min_size=1, max_size=4), _props(v5, PacketType.SUBACK)
    )
    unsubscribe = st.builds(
        Unsubscribe,
        _packet_ids,
        st.lists(filters(v5) | (shared_filters if v5 else filters(v5)), min_size=1, max_size=4),
        _props(v5, PacketType.UNSUBSCRIBE),
    )
    if v5:
        unsuback = st.builds(
            Unsuback,
            _packet_ids,
            st.lists(_reason_codes(PacketType.UNSUBACK), min_size=1, max_size=4),
            properties(PacketType.UNSUBACK),
        )
        disconnect = st.builds(
            Disconnect, _reason_codes(PacketType.DISCONNECT), properties(PacketType.DISCONNECT)
        )
    else:
        unsuback = st.builds(Unsuback, _packet_ids)
        disconnect = st.just(Disconnect())
    choices: list[st.SearchStrategy[Packet]] = [
        _connect(v5),
        _connack(v5),
        publishes(v5),
        _ack(Puback, v5),
        _ack(Pubrec, v5),
        _ack(Pubrel, v5),
        _ack(Pubcomp, v5),
        subscribe,
        suback,
        unsubscribe,
        unsuback,
        st.just(Pingreq()),
        st.just(Pingresp()),
        disconnect,
    ]
    if v5:
        choices.append(st.builds(Auth, _reason_codes(PacketType.AUTH), properties(PacketType.AUTH)))
    return st.one_of(choices)


def split(raw: bytes) -> tuple[int, bytes]:
    """(first byte, body) of one whole encoded packet, cut by the Framer."""
    buf, frames = Framer().feed(raw)
    assert len(frames) == 1, frames
    start, body, end = frames[0]
    assert (start, end) == (0, len(raw))
    return buf[start], buf[body:end]
