"""Fuzzing engine, codec side: raw packet builders, mutations, random valid packets and the codec
harness (``run_codec``). Used by tests/unit/test_fuzz_codec.py and bench/fuzz.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.constants import (
    ALLOWED_REASON_CODES,
    PROPERTIES,
    WILL,
    PacketType,
    PropertyId,
    PropertyType,
    ReasonCode,
)
from ferryman.protocols.mqtt.errors import (
    MqttError,
)
from ferryman.protocols.mqtt.framing import MAX_REMAINING_LENGTH, Framer
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

# ===================================================================================== reason codes

VALID_REASON_CODES = frozenset(int(c) for c in ReasonCode)
DISCONNECT_CODES = ALLOWED_REASON_CODES[PacketType.DISCONNECT]
CONNACK_CODES = ALLOWED_REASON_CODES[PacketType.CONNACK]
MALFORMED, PROTOCOL_ERROR = 0x81, 0x82
TOPIC_NAME_INVALID, TOPIC_ALIAS_INVALID, PACKET_TOO_LARGE = 0x90, 0x94, 0x95
WRONG_TYPE = frozenset((MALFORMED, PROTOCOL_ERROR))  # a packet type the client may not send: either reading

# ======================================================================================== raw bytes
# Written by hand (not with the codec under test) so that defects land exactly where a case puts them.


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n & 0x7F, n >> 7
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mstr(raw: bytes | str) -> bytes:
    b = raw.encode() if isinstance(raw, str) else raw
    return len(b).to_bytes(2, "big") + b


def pkt(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def pblock(*items: bytes) -> bytes:
    """An MQTT 5 property block (length included) from raw ``id + value`` items."""
    block = b"".join(items)
    return varint(len(block)) + block


def p_byte(pid: int, v: int) -> bytes:
    return bytes((pid, v))


def p_u16(pid: int, v: int) -> bytes:
    return bytes((pid,)) + v.to_bytes(2, "big")


def p_u32(pid: int, v: int) -> bytes:
    return bytes((pid,)) + v.to_bytes(4, "big")


def p_str(pid: int, raw: bytes | str) -> bytes:
    return bytes((pid,)) + mstr(raw)


def p_pair(k: bytes | str, v: bytes | str) -> bytes:
    return bytes((PropertyId.USER_PROPERTY,)) + mstr(k) + mstr(v)


def publish_raw(
    topic: bytes | str,
    payload: bytes = b"x",
    qos: int = 0,
    pid: int = 1,
    props: bytes | None = None,
    flags: int = 0,
) -> bytes:
    """PUBLISH; ``props`` is a whole property block (MQTT 5) or None (3.1.1)."""
    body = mstr(topic) + (pid.to_bytes(2, "big") if qos else b"") + (props or b"") + payload
    return pkt(0x30 | (qos << 1) | flags, body)


def connect_raw(
    version: int,
    client_id: bytes | str = "",
    clean: bool = True,
    username: bytes | str | None = "dev1",
    password: bytes | None = b"pw1",
    props: bytes = b"\x00",
    keepalive: int = 60,
    name: bytes = b"MQTT",
) -> bytes:
    flags = (
        (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    )
    body = mstr(name) + bytes((version, flags)) + keepalive.to_bytes(2, "big")
    body += (props if version == 5 else b"") + mstr(client_id)
    if username is not None:
        body += mstr(username)
    if password is not None:
        body += mstr(password)
    return pkt(0x10, body)


def subscribe_raw(pid: int, subs: Sequence[tuple[bytes | str, int]], props: bytes | None = None) -> bytes:
    body = pid.to_bytes(2, "big") + (props or b"") + b"".join(mstr(f) + bytes((o,)) for f, o in subs)
    return pkt(0x82, body)


# Ill-formed UTF-8 (MQTT-1.5.4-1: a Malformed Packet): bad continuation, overlong, surrogate, beyond U+10FFFF,
# bytes that never appear, truncated sequences, and U+0000 (forbidden in MQTT strings).
BAD_UTF8 = (
    b"\xc3\x28",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xe2\x82",
    b"\x00",
)
KNOWN_IDS = frozenset(int(p) for p in PROPERTIES)
UNKNOWN_IDS = tuple(i for i in range(256) if i not in KNOWN_IDS)

# ========================================================================================= mutation


T = TypeVar("T")


class Rand(Protocol):
    """What the mutators use: ``random.Random`` in the benchmark, Hypothesis' controlled one in the tests."""

    def random(self) -> float: ...
    def randrange(self, start: int, stop: int | None = ..., step: int = ...) -> int: ...
    def choice(self, seq: Sequence[T]) -> T: ...


FORGED_LENGTHS = (
    0,
    1,
    2,
    127,
    128,
    16_383,
    16_384,
    65_535,
    65_536,
    2_097_151,
    2_097_152,
    MAX_REMAINING_LENGTH,
)
# Remaining lengths no conforming sender writes: non-minimal encodings and a fifth byte.
BAD_LENGTH_ENCODINGS = (
    b"\x80\x00",
    b"\xff\x00",
    b"\x80\x80\x00",
    b"\xff\xff\xff\x80",
    b"\xff\xff\xff\xff\x01",
)


def _split_header(raw: bytes) -> tuple[int, int] | None:
    """(length of the remaining-length field, remaining length) of a packet at raw[0], or None."""
    value = 0
    for n, i in enumerate(range(1, min(5, len(raw))), start=1):
        b = raw[i]
        value |= (b & 0x7F) << (7 * (n - 1))
        if b < 0x80:
            return n, value
    return None


def fix_length(raw: bytes) -> bytes:
    """The same first byte and body with the remaining length made to fit the body again."""
    head = _split_header(raw)
    if head is None or len(raw) < 1 + head[0]:
        return raw
    return pkt(raw[0], raw[1 + head[0] :])


def mutate_once(rnd: Rand, raw: bytes) -> bytes:
    """One random defect: bit flip, byte set, truncation, insertion, deletion, duplication, forged length,
    ill-formed UTF-8, a property identifier, or another first byte."""
    n = len(raw)
    op = rnd.randrange(0, 12)
    pos = rnd.randrange(0, n + 1)
    if op == 0 and n:  # bit flip
        i = min(pos, n - 1)
        return raw[:i] + bytes((raw[i] ^ (1 << rnd.randrange(0, 8)),)) + raw[i + 1 :]
    if op == 1 and n:  # byte set to an interesting or random value
        i = min(pos, n - 1)
        v = rnd.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, rnd.randrange(0, 256)))
        return raw[:i] + bytes((v,)) + raw[i + 1 :]
    if op == 2:  # truncation
        return raw[:pos]
    if op == 3:  # insertion of random bytes
        k = rnd.randrange(1, 9)
        return raw[:pos] + bytes(rnd.randrange(0, 256) for _ in range(k)) + raw[pos:]
    if op == 4 and n:  # deletion
        k = rnd.randrange(1, 9)
        return raw[:pos] + raw[pos + k :]
    if op == 5 and n:  # duplication of a range (repeats properties, filters, fields)
        k = rnd.randrange(1, 17)
        return raw[:pos] + raw[pos : pos + k] + raw[pos:]
    if op == 6:  # forged remaining length
        head = _split_header(raw)
        body = raw[1 + head[0] :] if head else raw[1:]
        if rnd.random() < 0.3:
            length = rnd.choice(BAD_LENGTH_ENCODINGS)
        else:
            length = varint(rnd.choice((*FORGED_LENGTHS, max(0, len(body) + rnd.randrange(-3, 4)))))
        return raw[:1] + length + body
    if op == 7:  # ill-formed UTF-8
        return raw[:pos] + rnd.choice(BAD_UTF8) + raw[pos:]
    if op == 8:  # a property identifier: unknown, or known (misplaced or duplicated)
        pid = rnd.choice(UNKNOWN_IDS) if rnd.random() < 0.5 else rnd.choice(sorted(KNOWN_IDS))
        value = bytes(rnd.randrange(0, 256) for _ in range(rnd.randrange(0, 5)))
        return raw[:pos] + bytes((pid,)) + value + raw[pos:]
    if op == 9 and n:  # another packet type / flags
        return bytes((rnd.randrange(0, 256),)) + raw[1:]
    if op == 10 and n > 2:  # a 16-bit length field (string, packet id) made huge or zero
        i = min(pos, n - 2)
        return raw[:i] + rnd.choice((b"\xff\xff", b"\x00\x00", b"\x7f\xff")) + raw[i + 2 :]
    return raw + bytes(rnd.randrange(0, 256) for _ in range(rnd.randrange(1, 5)))  # trailing garbage


def mutate(rnd: Rand, raw: bytes, max_ops: int = 3) -> bytes:
    """1..max_ops defects; half the time the remaining length is made consistent again afterwards, so the
    defect reaches the decoder instead of stopping at framing."""
    for _ in range(rnd.randrange(1, max_ops + 1)):
        raw = mutate_once(rnd, raw)
    if rnd.random() < 0.5:
        raw = fix_length(raw)
    return raw


# ==================================================================================== valid packets
# A fast random generator of valid packets (the benchmark's seed corpus; the tests use Hypothesis'
# strategies from test_codec_strategies as well).

_TEXT = "abcxyz/$_-. é€𝄞"


def _text(rnd: Rand, max_len: int = 8) -> str:
    return "".join(rnd.choice(_TEXT) for _ in range(rnd.randrange(0, max_len + 1)))


def _topic(rnd: Rand) -> str:
    return "dev1/" + _text(rnd).replace("$", "") if rnd.random() < 0.7 else (_text(rnd) or "t")


def _prop_value(rnd: Rand, pid: int) -> object:
    spec = PROPERTIES[pid]
    if pid == PropertyId.RESPONSE_TOPIC:
        return _topic(rnd)
    if spec.values is not None:
        lo, hi = spec.values.start, spec.values.stop - 1
        return rnd.choice((lo, hi, rnd.randrange(lo, min(hi, lo + 1000) + 1)))
    t = spec.type
    if t is PropertyType.BYTE:
        return rnd.randrange(0, 256)
    if t is PropertyType.TWO_BYTE_INT:
        return rnd.randrange(0, 0x10000)
    if t is PropertyType.FOUR_BYTE_INT:
        return rnd.choice((0, 1, 0xFFFFFFFF, rnd.randrange(0, 1 << 32)))
    if t is PropertyType.VARINT:
        return rnd.choice((0, 127, 128, MAX_REMAINING_LENGTH, rnd.randrange(0, 1 << 20)))
    if t is PropertyType.UTF8_STRING:
        return _text(rnd)
    if t is PropertyType.BINARY:
        return bytes(rnd.randrange(0, 256) for _ in range(rnd.randrange(0, 8)))
    return (_text(rnd), _text(rnd))


def random_properties(rnd: Rand, where: int) -> Properties:
    allowed = sorted(pid for pid, spec in PROPERTIES.items() if where in spec.allowed)
    out: Properties = []
    seen: set[int] = set()
    for _ in range(rnd.randrange(0, 4)):
        pid = rnd.choice(allowed)
        if pid in seen and where not in PROPERTIES[pid].repeatable:
            continue
        seen.add(pid)
        out.append((pid, _prop_value(rnd, pid)))
    return out


def _pid(rnd: Rand) -> int:
    return rnd.choice((1, 2, 0xFFFF, rnd.randrange(1, 0x10000)))


def random_packet(rnd: Rand, version: int, uplink_only: bool = False) -> Packet:
    """A valid packet of any type for ``version`` (4: 3.1.1, 5); ``uplink_only``: one a client may send
    after CONNECT."""
    v5 = version == 5

    def props(where: int) -> Properties:
        return random_properties(rnd, where) if v5 else []

    def codes(ptype: PacketType) -> int:
        return int(rnd.choice(sorted(ALLOWED_REASON_CODES[ptype])))

    kinds = ["publish", "publish", "publish", "ack", "subscribe", "unsubscribe", "ping", "disconnect"]
    if not uplink_only:
        kinds += ["connect", "connack", "suback", "unsuback", "pingresp"]
    if v5:
        kinds.append("auth")
    kind = rnd.choice(kinds)
    if kind == "publish":
        qos = rnd.randrange(0, 3)
        ps = props(PacketType.PUBLISH)
        if uplink_only:  # a Subscription Identifier goes only from server to client (MQTT-3.3.4-6)
            ps = [(k, v) for k, v in ps if k != PropertyId.SUBSCRIPTION_IDENTIFIER]
        has_alias = any(p == PropertyId.TOPIC_ALIAS for p, _ in ps)
        topic = "" if has_alias and rnd.random() < 0.5 else _topic(rnd)
        payload = bytes(rnd.randrange(0, 256) for _ in range(rnd.randrange(0, 16)))
        dup = bool(qos) and rnd.random() < 0.3
        return Publish(topic, payload, qos, rnd.random() < 0.2, dup, _pid(rnd) if qos else None, ps)
    if kind == "ack":
        cls: type[Puback | Pubrec | Pubrel | Pubcomp] = rnd.choice((Puback, Pubrec, Pubrel, Pubcomp))
        if not v5:
            return cls(_pid(rnd))
        return cls(_pid(rnd), codes(cls.packet_type), props(cls.packet_type))
    if kind == "subscribe":
        subs = []
        for _ in range(rnd.randrange(1, 4)):
            f = rnd.choice(("dev1/#", "dev1/+/x", "public/#", "#", "+/y", "other/z", "$SYS/#", _topic(rnd)))
            if v5:
                subs.append(
                    Subscription(
                        f, rnd.randrange(0, 3), rnd.random() < 0.2, rnd.random() < 0.2, rnd.randrange(0, 3)
                    )
                )
            else:
                subs.append(Subscription(f, rnd.randrange(0, 3)))
        return Subscribe(_pid(rnd), subs, props(PacketType.SUBSCRIBE))
    if kind == "unsubscribe":
        filters = [rnd.choice(("dev1/#", "#", "other/z", _topic(rnd))) for _ in range(rnd.randrange(1, 3))]
        return Unsubscribe(_pid(rnd), filters, props(PacketType.UNSUBSCRIBE))
    if kind == "ping":
        return Pingreq()
    if kind == "pingresp":
        return Pingresp()
    if kind == "disconnect":
        return Disconnect(codes(PacketType.DISCONNECT), props(PacketType.DISCONNECT)) if v5 else Disconnect()
    if kind == "auth":
        return Auth(codes(PacketType.AUTH), props(PacketType.AUTH))
    if kind == "connect":
        will = None
        if rnd.random() < 0.3:
            will = Will(_topic(rnd), b"w", rnd.randrange(0, 3), rnd.random() < 0.5, props(WILL))
        cid = _text(rnd)
        return Connect(
            cid,
            5 if v5 else 4,
            "MQTT",
            True if not (cid or v5) else rnd.random() < 0.5,
            rnd.randrange(0, 0x10000),
            "dev1",
            b"pw1",
            will,
            props(PacketType.CONNECT),
        )
    if kind == "connack":
        code = codes(PacketType.CONNACK) if v5 else rnd.randrange(0, 6)
        return Connack(code == 0 and rnd.random() < 0.5, code, props(PacketType.CONNACK))
    if kind == "suback":
        allowed = sorted(ALLOWED_REASON_CODES[PacketType.SUBACK]) if v5 else [0, 1, 2, 0x80]
        return Suback(
            _pid(rnd), [rnd.choice(allowed) for _ in range(rnd.randrange(1, 4))], props(PacketType.SUBACK)
        )
    # unsuback
    if not v5:
        return Unsuback(_pid(rnd))
    return Unsuback(_pid(rnd), [codes(PacketType.UNSUBACK)], props(PacketType.UNSUBACK))


def encode_packet(packet: Packet, version: int) -> bytes:
    return bytes(codec.encode(packet, packet.protocol_level if isinstance(packet, Connect) else version))


# ==================================================================================== codec harness


class CodecBug(AssertionError):
    """The codec did something the fuzz properties forbid (an exception that is no MqttError, a reason
    code the proxy cannot send, a round trip that changes the packet, ...)."""


@dataclass
class CodecOutcome:
    packets: int = 0  # decoded fine
    errors: dict[str, int] = field(default_factory=dict)  # "ClassName 0xNN" -> count

    def error(self, exc: MqttError) -> None:
        key = f"{type(exc).__name__} 0x{exc.reason_code:02X}"
        self.errors[key] = self.errors.get(key, 0) + 1


def _bug(what: str, data: bytes, version: int, exc: BaseException | None = None) -> CodecBug:
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return CodecBug(f"{what}{detail}\n  version={version} input={data.hex()}")


def _check_code(exc: MqttError, allowed: frozenset[int], what: str, data: bytes, version: int) -> None:
    code = exc.reason_code
    if code not in VALID_REASON_CODES or code < 0x80:
        raise _bug(
            f"{what} raised {type(exc).__name__} with reason code 0x{code:02X}, no MQTT 5 error",
            data,
            version,
        )
    if code not in allowed:
        raise _bug(
            f"{what} raised {type(exc).__name__} with 0x{code:02X}, which no answer of the proxy may carry",
            data,
            version,
        )


def _frames(
    data: bytes, cuts: Sequence[int], max_packet_size: int
) -> tuple[list[bytes], MqttError | None, int]:
    """Whole packets (as bytes), the framing error if any, and what stayed buffered, feeding ``data`` cut
    at ``cuts``."""
    framer = Framer(max_packet_size)
    out: list[bytes] = []
    last = 0
    for cut in [*sorted(c for c in cuts if 0 < c < len(data)), len(data)]:
        try:
            buf, frames = framer.feed(data[last:cut])
        except MqttError as exc:
            return out, exc, -1
        out.extend(bytes(buf[s:e]) for s, _, e in frames)
        last = cut
    return out, None, framer.buffered


def run_codec(
    data: bytes, version: int, cuts: Sequence[int] = (), max_packet_size: int = MAX_REMAINING_LENGTH + 5
) -> CodecOutcome:
    """Everything the proxy does with bytes on the codec level, checked: raises ``CodecBug`` on a property
    violation, returns what happened otherwise."""
    outcome = CodecOutcome()
    # 1. Framing, whole and cut: the same packets, the same error, the same leftover.
    try:
        whole, err, left = _frames(data, (), max_packet_size)
        split, err2, left2 = _frames(data, cuts, max_packet_size) if cuts else (whole, err, left)
    except Exception as exc:
        raise _bug("Framer.feed raised", data, version, exc) from exc
    if err is not None:
        _check_code(err, DISCONNECT_CODES, "Framer.feed", data, version)
        outcome.error(err)
    if err is not None:
        # Framer.feed raises for the whole chunk, so the packets it had cut from the same chunk before the
        # bad header are not returned: compare with the byte-by-byte framing, of which each is a prefix.
        ref, err3, _ = _frames(data, range(1, len(data)), max_packet_size)
        same = type(err) is type(err2) is type(err3) and all(ref[: len(f)] == f for f in (whole, split))
        whole = ref
    else:
        same = (whole, left) == (split, left2) and err2 is None
    if not same:
        raise _bug(f"framing depends on where the stream is cut (cuts {list(cuts)})", data, version)
    for raw in whole:
        _check_packet(raw, version, outcome, data)
    return outcome


def _check_packet(raw: bytes, version: int, outcome: CodecOutcome, data: bytes) -> None:
    first = raw[0]
    head = _split_header(raw)
    assert head is not None
    body = 1 + head[0]
    is_connect = first >> 4 == 1
    # 2. decode: an MqttError with a code the proxy can answer with, or a packet.
    packet: Packet | None = None
    derr: MqttError | None = None
    try:
        packet = codec.decode(first, raw[body:], version)
    except MqttError as exc:
        derr = exc
        _check_code(exc, CONNACK_CODES if is_connect else DISCONNECT_CODES, "decode", data, version)
        outcome.error(exc)
    except Exception as exc:
        raise _bug("decode raised", data, version, exc) from exc
    # 3. publish_fields (the data plane's PUBLISH path) agrees with decode.
    if first >> 4 == 3:
        try:
            topic, alias, poff, pid = codec.publish_fields(raw, body, len(raw), first, version)
        except MqttError as exc:
            if derr is None or (type(exc), exc.reason_code) != (type(derr), derr.reason_code):
                raise _bug(
                    f"publish_fields raised {exc!r} but decode gave {derr or packet!r}", data, version
                ) from exc
        except Exception as exc:
            raise _bug("publish_fields raised", data, version, exc) from exc
        else:
            if not isinstance(packet, Publish):
                raise _bug(f"publish_fields accepted what decode refused ({derr!r})", data, version)
            got_alias = next((v for p, v in packet.properties if p == PropertyId.TOPIC_ALIAS), None)
            if (topic, alias, pid, raw[poff:]) != (
                packet.topic,
                got_alias,
                packet.packet_id or 0,
                packet.payload,
            ):
                raise _bug(f"publish_fields gave {(topic, alias, pid)}, decode {packet!r}", data, version)
    if packet is None:
        return
    outcome.packets += 1
    # 4. Round trip: encode, frame, decode: the same packet.
    try:
        again = encode_packet(packet, version)
        frames, ferr, left = _frames(again, (), MAX_REMAINING_LENGTH + 5)
        if ferr is not None or len(frames) != 1 or left:
            raise _bug(f"re-encoding {packet!r} gave unframeable bytes {again.hex()}", data, version)
        h = _split_header(again)
        assert h is not None
        back = codec.decode(again[0], again[1 + h[0] :], version)
    except CodecBug:
        raise
    except Exception as exc:
        raise _bug(f"re-encoding {packet!r} and decoding it again failed", data, version, exc) from exc
    if back != packet:
        raise _bug(f"round trip changed the packet: {packet!r} -> {back!r}", data, version)
