"""Fuzzing engine, live side: exchanges with a running gateway, the targeted adversarial cases, the
oracle that predicts the right answer, and the storm.
Used by tests/integration/test_fuzz_live.py and bench/fuzz.py."""

from __future__ import annotations

import random
import re
import socket
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.pool

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.constants import (
    PropertyId,
)
from ferryman.protocols.mqtt.errors import (
    MqttError,
)
from ferryman.protocols.mqtt.framing import Framer
from ferryman.protocols.mqtt.packets import (
    Connack,
    Disconnect,
    Pubcomp,
    Publish,
    Subscribe,
)
from tests.fuzz_codec import (
    BAD_UTF8,
    DISCONNECT_CODES,
    MALFORMED,
    PACKET_TOO_LARGE,
    PROTOCOL_ERROR,
    TOPIC_ALIAS_INVALID,
    TOPIC_NAME_INVALID,
    WRONG_TYPE,
    _frames,
    _split_header,
    connect_raw,
    encode_packet,
    mstr,
    mutate,
    p_byte,
    p_pair,
    p_str,
    p_u16,
    p_u32,
    pblock,
    pkt,
    publish_raw,
    random_packet,
    subscribe_raw,
    varint,
)
from tests.servers import uid

# ===================================================================================== live harness


@dataclass
class Exchange:
    """What one adversarial connection got back."""

    packets: list[Any] = field(default_factory=list)  # decoded packets; undecodable ones as bytes
    closed: bool = False  # the gateway closed (or reset) the connection within the bound
    seconds: float = 0.0  # until the close, or until we gave up waiting
    reset: bool = False
    send_error: str = ""


def _decode_any(first: int, body: bytes, version: int) -> Any:
    for v in (version, 4 if version == 5 else 5):
        try:
            return codec.decode(first, body, v)
        except MqttError:
            continue
    return bytes((first,)) + body


def exchange(
    port: int,
    segments: Sequence[bytes | float],
    version: int,
    wait: float = 3.0,
    rst: bool = False,
    read_first: bool = False,
) -> Exchange:
    """Connect, send ``segments`` (a float is a pause), then read until the gateway closes or ``wait``
    seconds pass. ``read_first``: wait for the CONNACK after the first segment (so later segments land
    after the gateway has the broker's answer). ``rst``: end with a TCP reset instead of reading."""
    out = Exchange()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    framer = Framer()
    started = time.monotonic()

    def read_packets(deadline: float, until_one: bool = False) -> bool:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                out.reset = True
                return True
            if not data:
                return True
            buf, frames = framer.feed(data)
            for s, b, e in frames:
                out.packets.append(_decode_any(buf[s], bytes(buf[b:e]), version))
            if until_one and out.packets:
                return False

    try:
        for i, seg in enumerate(segments):
            if isinstance(seg, float):
                gevent.sleep(seg)
                continue
            try:
                sock.sendall(seg)
            except OSError as exc:
                out.send_error = repr(exc)
                break
            if read_first and i == 0 and read_packets(time.monotonic() + 5, until_one=True):
                out.closed = True
                break
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            out.seconds = time.monotonic() - started
            return out
        if not out.closed:
            out.closed = read_packets(time.monotonic() + wait)
    except OSError:
        out.closed = True
    finally:
        out.seconds = time.monotonic() - started
        sock.close()
    return out


ESCAPE = re.compile(r"Traceback|\| ERROR |\| CRITICAL |failed with |Unhandled|Exception in ")


def escaped(log: str) -> list[str]:
    """Lines of a gateway log that show an exception escaping a session (or anything at ERROR)."""
    return [ln for ln in log.splitlines() if ESCAPE.search(ln)]


def escaped_kinds(log: str) -> dict[str, int]:
    """Escaped exceptions in a gateway log by their last traceback line's exception type and place."""
    kinds: dict[str, int] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        where, what = "", ""
        for nxt in lines[i + 1 : i + 60]:
            if nxt.startswith("  File "):
                where = nxt.strip()
            elif not nxt.startswith(" "):
                what = nxt.split(":", 1)[0]
                break
        key = f"{what} at {where}"
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def metric(metrics_port: int, prefix: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


# ======================================================================================= live cases


@dataclass(frozen=True)
class LiveCase:
    """One adversarial connection and the answer the spec (or the README's refusals table) gives it.

    ``segments`` follow a valid CONNECT when ``connect`` is set (user dev1, publish dev1/#). Expectations:
    ``disconnect``: MQTT 5 DISCONNECT reason codes allowed (then closed); ``connack``: the CONNACK code
    (then closed unless 0); ``closed``: closed within the bound; ``answer``: a packet class the gateway
    must send back while keeping the connection open.
    """

    name: str
    version: int
    segments: tuple[bytes | float, ...]
    connect: bool = True
    disconnect: frozenset[int] | None = None
    connack: int | None = None
    closed: bool = True
    answer: type | None = None
    answer_code: int | None = None
    rst: bool = False


def _v5(name: str, raw: bytes, *codes: int) -> LiveCase:
    return LiveCase(name, 5, (raw,), disconnect=frozenset(codes))


def _v3(name: str, raw: bytes) -> LiveCase:
    return LiveCase(name, 4, (raw,))


V5 = b"\x00"  # an empty MQTT 5 property block


def live_cases() -> list[LiveCase]:
    """The targeted adversarial streams of the issue, each with its expected answer."""
    t = b"dev1/fz"
    return [
        # ---- remaining length
        _v5("v5-forged-length-268435455-then-stall", b"\x30\xff\xff\xff\x7f", PACKET_TOO_LARGE),
        _v5("v5-forged-length-just-over-max", b"\x30" + varint(65_536 - 3) + b"\x00", PACKET_TOO_LARGE),
        _v5("v5-length-five-bytes", b"\x30\xff\xff\xff\xff\x01", MALFORMED),
        _v5("v5-length-not-minimal", b"\x30\x80\x00", MALFORMED),
        _v3("v3-forged-length-268435455-then-stall", b"\x30\xff\xff\xff\x7f"),
        # ---- properties
        _v5("v5-unknown-property-id", publish_raw(t, props=pblock(b"\x07\x00")), MALFORMED),
        _v5("v5-property-id-0x80", publish_raw(t, props=pblock(b"\x80\x01")), MALFORMED),
        _v5("v5-connect-only-property", publish_raw(t, props=pblock(p_u32(0x11, 9))), MALFORMED),
        _v5(
            "v5-duplicate-payload-format",
            publish_raw(t, props=pblock(p_byte(0x01, 1), p_byte(0x01, 1))),
            PROTOCOL_ERROR,
        ),
        _v5(
            "v5-duplicate-topic-alias",
            publish_raw(t, props=pblock(p_u16(0x23, 1), p_u16(0x23, 2))),
            PROTOCOL_ERROR,
        ),
        _v5(
            "v5-duplicate-message-expiry",
            publish_raw(t, props=pblock(p_u32(0x02, 1), p_u32(0x02, 1))),
            PROTOCOL_ERROR,
        ),
        _v5("v5-property-length-overrun", publish_raw(t, props=b"\x20" + p_byte(0x01, 1)), MALFORMED),
        _v5("v5-payload-format-2", publish_raw(t, props=pblock(p_byte(0x01, 2))), PROTOCOL_ERROR),
        # ---- UTF-8
        *(
            _v5(f"v5-bad-utf8-topic-{b.hex()}", publish_raw(b"dev1/" + b, props=V5), MALFORMED)
            for b in BAD_UTF8
        ),
        _v5(
            "v5-bad-utf8-user-property", publish_raw(t, props=pblock(p_pair("k", b"\xed\xa0\x80"))), MALFORMED
        ),
        _v5("v5-bad-utf8-content-type", publish_raw(t, props=pblock(p_str(0x03, b"\xc0\xaf"))), MALFORMED),
        _v5("v5-bad-utf8-subscribe-filter", subscribe_raw(1, [(b"dev1/\xff", 0)], V5), MALFORMED),
        _v3("v3-bad-utf8-topic", publish_raw(b"dev1/\xc3\x28")),
        _v3("v3-surrogate-topic", publish_raw(b"dev1/\xed\xa0\x80", qos=1)),
        _v5("v5-wildcard-topic", publish_raw(b"dev1/#", props=V5), TOPIC_NAME_INVALID),
        # ---- topic aliases (mosquitto's Topic Alias Maximum is 10)
        _v5("v5-topic-alias-0", publish_raw(t, props=pblock(p_u16(0x23, 0))), TOPIC_ALIAS_INVALID),
        _v5(
            "v5-topic-alias-above-maximum", publish_raw(t, props=pblock(p_u16(0x23, 11))), TOPIC_ALIAS_INVALID
        ),
        _v5("v5-topic-alias-65535", publish_raw(t, props=pblock(p_u16(0x23, 0xFFFF))), TOPIC_ALIAS_INVALID),
        _v5("v5-unknown-topic-alias", publish_raw(b"", props=pblock(p_u16(0x23, 5))), TOPIC_ALIAS_INVALID),
        _v5("v5-empty-topic-no-alias", publish_raw(b"", props=V5), PROTOCOL_ERROR),
        # ---- packets in the wrong state or direction
        _v5("v5-second-connect", connect_raw(5, "again"), PROTOCOL_ERROR),
        _v3("v3-second-connect", connect_raw(4, "again")),
        _v5("v5-connack-from-client", b"\x20\x03\x00\x00\x00", *WRONG_TYPE),
        _v5("v5-suback-from-client", b"\x90\x04\x00\x01\x00\x00", *WRONG_TYPE),
        _v5("v5-unsuback-from-client", b"\xb0\x04\x00\x01\x00\x00", *WRONG_TYPE),
        _v5("v5-pingresp-from-client", b"\xd0\x00", *WRONG_TYPE),
        _v3("v3-suback-from-client", b"\x90\x03\x00\x01\x00"),
        _v3("v3-auth", b"\xf0\x00"),
        # PUBREL for an unknown packet identifier is no error: the broker answers PUBCOMP (MQTT 5 allows
        # 0x92 "not found"; mosquitto 2.0 says 0x00) and the connection stays open.
        LiveCase("v5-pubrel-unknown-id", 5, (b"\x62\x02\x00\x07",), closed=False, answer=Pubcomp),
        LiveCase("v3-pubrel-unknown-id", 4, (b"\x62\x02\x00\x07",), closed=False, answer=Pubcomp),
        # ---- other malformed packets the proxy decodes
        _v5("v5-publish-qos3", b"\x36\x06" + mstr(t)[:4] + b"\x00\x01", MALFORMED),
        _v5("v5-publish-dup-qos0", publish_raw(t, props=V5, flags=0x08), MALFORMED),
        _v5("v5-publish-qos1-packet-id-0", publish_raw(t, qos=1, pid=0, props=V5), PROTOCOL_ERROR),
        _v5("v5-subscribe-reserved-bits", subscribe_raw(1, [("dev1/#", 0xC0)], V5), MALFORMED),
        _v5("v5-subscribe-no-filters", pkt(0x82, b"\x00\x01\x00"), PROTOCOL_ERROR),
        _v5("v5-subscribe-bad-flags", b"\x80\x06\x00\x01\x00\x01a\x00", MALFORMED),
        # ---- before (or instead of) CONNECT
        LiveCase("garbage-first", 4, (bytes(range(256)) * 4,), connect=False),
        LiveCase("publish-first", 4, (publish_raw(t),), connect=False),
        LiveCase("connect-header-268435455", 4, (b"\x10\xff\xff\xff\x7f",), connect=False),
        LiveCase("connect-truncated-then-stall", 4, (connect_raw(4, "c")[:9],), connect=False),
        LiveCase("connect-bad-utf8-client-id-v3", 4, (connect_raw(4, b"\xc3\x28"),), connect=False),
        LiveCase(
            "connect-bad-utf8-client-id-v5",
            5,
            (connect_raw(5, b"\xc3\x28"),),
            connect=False,
            connack=MALFORMED,
        ),
        LiveCase(
            "connect-unknown-property-v5",
            5,
            (connect_raw(5, "c", props=pblock(b"\x07\x00")),),
            connect=False,
            connack=MALFORMED,
        ),
        LiveCase(
            "connect-duplicate-property-v5",
            5,
            (connect_raw(5, "c", props=pblock(p_u32(0x11, 1), p_u32(0x11, 1))),),
            connect=False,
            connack=PROTOCOL_ERROR,
        ),
        LiveCase(
            "connect-protocol-level-6",
            4,
            (pkt(0x10, mstr(b"MQTT") + b"\x06\x02\x00\x3c" + mstr("c")),),
            connect=False,
            connack=1,
        ),
        LiveCase(
            "connect-protocol-name-mqisdp-level-4",
            4,
            (pkt(0x10, mstr(b"MQIsdp") + b"\x04\x02\x00\x3c" + mstr("c")),),
            connect=False,
            connack=1,
        ),
        LiveCase(
            "connect-flags-0x11", 5, (b"\x11" + connect_raw(5, "c")[1:],), connect=False, connack=MALFORMED
        ),
    ]


def spec_cases() -> list[LiveCase]:
    """Cases where the gateway currently gives another answer than the spec: see the tests using them."""
    return [
        # MQTT-3.1.3-8: "If the Client supplies a zero-byte ClientId with CleanSession set to 0, the Server
        # MUST respond to the CONNECT Packet with a CONNACK return code 0x02 (Identifier rejected) and then
        # close the Network Connection."
        LiveCase(
            "v3-empty-client-id-clean-session-0", 4, (connect_raw(4, "", clean=False),), False, connack=2
        ),
        LiveCase(
            "v31-empty-client-id-clean-session-0",
            3,
            (connect_raw(3, "", clean=False, name=b"MQIsdp"),),
            False,
            connack=2,
        ),
    ]


def run_case(port: int, case: LiveCase, wait: float = 3.0) -> Exchange:
    segments: tuple[bytes | float, ...] = case.segments
    if case.connect:
        segments = (connect_raw(case.version, f"fz-{uid()}", keepalive=60), *segments)
    return exchange(port, segments, case.version, wait=wait, rst=case.rst, read_first=case.connect)


def case_problems(case: LiveCase, got: Exchange, bound: float) -> list[str]:
    """What is wrong with ``got`` for ``case`` (empty: as expected)."""
    problems = []
    pkts = got.packets[1:] if case.connect else got.packets
    if case.connect and (
        not got.packets or not isinstance(got.packets[0], Connack) or got.packets[0].reason_code
    ):
        return [f"valid CONNECT not accepted: {got.packets[:1]}"]
    if case.connack is not None:
        acks = [p for p in pkts if isinstance(p, Connack)]
        if [a.reason_code for a in acks] != [case.connack]:
            problems.append(f"expected CONNACK 0x{case.connack:02X}, got {pkts}")
    if case.closed and not case.rst:
        if not got.closed:
            problems.append(f"not closed within {bound}s (got {pkts})")
        elif got.seconds > bound:
            problems.append(f"closed only after {got.seconds:.2f}s")
    if case.disconnect is not None:
        codes = [p.reason_code for p in pkts if isinstance(p, Disconnect)]
        if len(codes) != 1 or codes[0] not in case.disconnect:
            want = "/".join(f"0x{c:02X}" for c in sorted(case.disconnect))
            problems.append(f"expected DISCONNECT {want}, got {pkts}")
    elif case.version != 5 and not case.connack:
        stray = [p for p in pkts if not isinstance(p, (Connack, Pubcomp))]
        if stray:
            problems.append(f"unexpected packets {stray}")
    if case.answer is not None:
        answers = [p for p in pkts if isinstance(p, case.answer)]
        if not answers:
            problems.append(f"expected a {case.answer.__name__}, got {pkts}")
        elif case.answer_code is not None and getattr(answers[0], "reason_code", None) != case.answer_code:
            problems.append(f"expected {case.answer.__name__} 0x{case.answer_code:02X}, got {answers[0]}")
        if got.closed:
            problems.append("closed, should have stayed open")
    return problems


class LogWatch:
    """New lines of the gateway's log since the watch started."""

    def __init__(self, read: Callable[[], str]) -> None:
        self.read = read
        self.start = len(read())

    def new(self) -> str:
        return self.read()[self.start :]

    def escaped(self, settle: float = 0.1) -> list[str]:
        time.sleep(settle)
        return escaped(self.new())


# ======================================================================================== the storm


@dataclass
class Prediction:
    """What the gateway must do with a stream, as far as can be known without asking the broker."""

    codes: frozenset[int] | None = None  # the proxy must DISCONNECT (MQTT 5) with one of these and close
    open: bool = False  # every packet valid and handled by the proxy itself: the connection stays open
    closed: bool = False  # the connection must be closed within the bound
    connack: int | None = None  # ... after a CONNACK with this code


ALIAS_MAX = 10  # mosquitto's Topic Alias Maximum (config/mosquitto.conf keeps the default)
_UP_FIXED = frozenset((0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0))


def _discouraged(packet: Any) -> bool:
    """A string in the packet with a code point MQTT 1.5.4 says SHOULD NOT be sent and a receiver MAY
    treat as malformed (controls U+0001..U+001F and U+007F..U+009F, non-characters): mosquitto does."""

    def bad(text: str) -> bool:
        return any(
            c < " " or "\x7f" <= c <= "\x9f" or "\ufdd0" <= c <= "\ufdef" or (ord(c) & 0xFFFE) == 0xFFFE
            for c in text
        )

    texts: list[str] = []
    if isinstance(packet, Publish):
        texts.append(packet.topic)
    elif isinstance(packet, Subscribe):
        texts += [sub.topic_filter for sub in packet.subscriptions]
    for _, v in getattr(packet, "properties", []):
        if isinstance(v, str):
            texts.append(v)
        elif isinstance(v, tuple):
            texts += [x for x in v if isinstance(x, str)]
    return any(bad(t) for t in texts)


def oracle(stream: bytes, version: int, max_packet_size: int) -> Prediction:
    """The answer the gateway owes a stream sent (in one write) after a valid CONNECT, from the packets it
    judges itself: first bytes, lengths, PUBLISH, SUBSCRIBE, CONNECT. No prediction where the broker is
    the judge (acks, UNSUBSCRIBE, PINGREQ, DISCONNECT, AUTH, strings mosquitto refuses)."""
    v5 = version == 5
    frames, err, _ = _frames(stream, (), max_packet_size)
    aliases: set[int] = set()
    broker: set[int] = set()  # what the broker will say about a packet the proxy forwards
    for raw in frames:
        first = raw[0]
        ptype = first >> 4
        code: int | frozenset[int] | None = None
        if ptype == 3:
            if (first >> 1) & 3 == 3 or (first & 8 and not first & 6):
                code = MALFORMED
        elif ptype == 1:
            code = MALFORMED if first != 0x10 else PROTOCOL_ERROR
        elif first not in _UP_FIXED and not (v5 and first == 0xF0):
            code = WRONG_TYPE if first & 0x0F == _FIXED_FLAGS.get(ptype, -1) else MALFORMED
        elif ptype not in (3, 8):
            return Prediction()  # the broker judges the rest
        if code is None:
            head = _split_header(raw)
            assert head is not None
            try:
                p = codec.decode(first, raw[1 + head[0] :], version)
            except MqttError as exc:
                code = exc.reason_code
            else:
                if _discouraged(p):
                    return Prediction()
                alias = next((v for k, v in p.properties if k == PropertyId.TOPIC_ALIAS), None)
                if isinstance(p, Publish) and any(
                    k == PropertyId.SUBSCRIPTION_IDENTIFIER for k, _ in p.properties
                ):
                    code = PROTOCOL_ERROR  # MQTT-3.3.4-6: never from a client
                elif isinstance(p, Publish) and isinstance(alias, int):
                    if alias > ALIAS_MAX:
                        broker.add(TOPIC_ALIAS_INVALID)
                    elif not p.topic and alias not in aliases:
                        code = TOPIC_ALIAS_INVALID
                    aliases.add(alias)
        if code is not None:
            codes = code if isinstance(code, frozenset) else frozenset((code,))
            return Prediction(codes | frozenset(broker))
    if err is not None:
        return Prediction(frozenset((err.reason_code, *broker)))
    if broker:
        return Prediction(frozenset(broker))
    return Prediction(open=True)


def connect_oracle(stream: bytes, max_packet_size: int) -> Prediction:
    """The answer the gateway owes a stream that should start with a CONNECT (README refusals table and
    MQTT-3.1.3-8): nothing valid -> closed; unsupported protocol -> CONNACK 1; a bad MQTT 5 CONNECT ->
    CONNACK with its reason code; a 3.1.1 empty client id without clean session -> CONNACK 2; else the
    broker or the handler answer (no prediction)."""
    frames, _, _ = _frames(stream, (), max_packet_size)
    if not frames:
        return Prediction(closed=True)  # framing error, or incomplete until the connect timeout
    raw = frames[0]
    if raw[0] >> 4 != 1:
        return Prediction(closed=True)
    head = _split_header(raw)
    assert head is not None
    body = raw[1 + head[0] :]
    name_len = int.from_bytes(body[:2], "big") if len(body) >= 2 else 0
    level = body[2 + name_len] if len(body) > 2 + name_len else 0
    try:
        codec.decode(raw[0], body, 5)
    except MqttError as exc:
        if exc.reason_code == 0x84:
            return Prediction(closed=True, connack=1)
        if level == 5:
            return Prediction(closed=True, connack=exc.reason_code)
        if exc.reason_code == 0x85:
            return Prediction(closed=True, connack=2)
        return Prediction(closed=True)
    return Prediction()


_FIXED_FLAGS = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0, 14: 0, 15: 0}


@dataclass
class StormCase:
    kind: str
    version: int
    segments: tuple[bytes | float, ...]
    connect: bool
    rst: bool = False
    prediction: Prediction | None = None
    case: LiveCase | None = None


def storm_case(
    rnd: random.Random, max_packet_size: int = 65_536, targeted: Sequence[LiveCase] = ()
) -> StormCase:
    """One random adversarial connection: a targeted case, a mutated stream after CONNECT (3.1.1 or 5),
    garbage instead of CONNECT, a mutated CONNECT, a reset, or a refused QoS 2 flow with a bad PUBREL."""
    roll = rnd.random()
    version = rnd.choice((4, 5))
    if targeted and roll < 0.15:
        case = rnd.choice(targeted)
        return StormCase("targeted", case.version, case.segments, case.connect, case.rst, None, case)
    if roll < 0.65:
        packets_ = [
            encode_packet(random_packet(rnd, version, uplink_only=True), version)
            for _ in range(rnd.randrange(1, 4))
        ]
        i = rnd.randrange(0, len(packets_))
        packets_[i] = mutate(rnd, packets_[i])
        stream = b"".join(packets_)
        return StormCase(
            "mutated", version, (stream,), True, prediction=oracle(stream, version, max_packet_size)
        )
    if roll < 0.75:
        garbage = bytes(rnd.randrange(0, 256) for _ in range(rnd.randrange(1, 200)))
        p = connect_oracle(garbage, max_packet_size)
        return StormCase("garbage-first", version, (garbage,), False, prediction=p)
    if roll < 0.85:
        raw = mutate(rnd, connect_raw(version, f"fzc-{rnd.randrange(1 << 30)}", clean=rnd.random() < 0.8))
        return StormCase(
            "mutated-connect", version, (raw,), False, prediction=connect_oracle(raw, max_packet_size)
        )
    if roll < 0.89:
        partial = connect_raw(version, "c")[: rnd.randrange(0, 20)]
        return StormCase("reset", version, (partial, 0.05) if partial else (0.05,), False, rst=True)
    if roll < 0.93:
        # A header announcing a packet just under the maximum, part of its body, then a stall: the gateway
        # holds the partial packet (bounded by max_packet_size) until the client goes.
        length = max_packet_size - 5 - rnd.randrange(0, 1000)
        head = b"\x30" + varint(length) + mstr("dev1/stall")
        body = bytes(rnd.randrange(0, min(length - 12, 4096)))
        return StormCase(
            "stall-below-max", version, (head + body, 1.0), True, prediction=Prediction(open=True)
        )
    pubrel = mutate(rnd, b"\x62\x02\x00\x01")
    return StormCase(
        "refused-qos2-then-pubrel", 4, (publish_raw(b"other/t", qos=2, pid=1), 0.05, pubrel), True
    )


@dataclass
class StormResult:
    cases: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)  # DISCONNECT reason codes seen
    closed: int = 0


def run_storm_case(
    port: int, sc: StormCase, result: StormResult, bound: float = 3.0, open_wait: float = 0.5
) -> None:
    """Run one storm connection and add what was wrong with the answer to ``result.problems``.
    ``bound``: seconds a bad connection has to be closed in; ``open_wait``: how long one that should stay
    open is watched."""
    segments = sc.segments
    if sc.connect:
        segments = (connect_raw(sc.version, f"fz-{uid()}", keepalive=60), *segments)
    pred = sc.prediction
    must_close = (sc.case is not None and sc.case.closed) or (
        pred is not None and (pred.closed or pred.codes)
    )
    try:
        got = exchange(
            port,
            segments,
            sc.version,
            wait=bound if must_close else open_wait,
            rst=sc.rst,
            read_first=sc.connect,
        )
    except OSError as exc:
        result.problems.append(f"{sc.kind}: could not connect: {exc!r}")
        return
    result.cases += 1
    result.by_kind[sc.kind] = result.by_kind.get(sc.kind, 0) + 1
    result.closed += got.closed
    pkts = got.packets[1:] if sc.connect else got.packets
    stream = b"".join(s for s in sc.segments if isinstance(s, bytes))
    label = f"{sc.case.name if sc.case else sc.kind} v{sc.version} {stream[:300].hex()}"
    for p in pkts:
        if isinstance(p, Disconnect):
            result.codes[p.reason_code] = result.codes.get(p.reason_code, 0) + 1
            if p.reason_code not in DISCONNECT_CODES:
                result.problems.append(f"{label}: DISCONNECT 0x{p.reason_code:02X} is no DISCONNECT code")
            elif p.reason_code == 0x89:
                # Nothing in the storm makes the gateway or the broker busy: 0x89 "server busy" (come back
                # later) answers a client whose own packet was bad, and it retries the same bytes.
                result.problems.append(f"{label}: DISCONNECT 0x89 server busy for a bad client packet: {p}")
        elif isinstance(p, bytes):
            result.problems.append(f"{label}: the gateway sent an undecodable packet {p.hex()}")
    if sc.case is not None:
        result.problems.extend(f"{sc.case.name}: {problem}" for problem in case_problems(sc.case, got, bound))
        return
    if sc.connect and (not got.packets or not isinstance(got.packets[0], Connack)):
        result.problems.append(f"{label}: no CONNACK for a valid CONNECT: {got.packets}")
        return
    if pred is None:
        return
    if (pred.closed or pred.codes) and not got.closed:
        result.problems.append(f"{label}: not closed within {bound}s, got {pkts}")
    if pred.open and got.closed:
        result.problems.append(f"{label}: a valid stream was closed, got {pkts}")
    if pred.connack is not None:
        acks = [p.reason_code for p in pkts if isinstance(p, Connack)]
        if acks != [pred.connack]:
            result.problems.append(f"{label}: expected CONNACK 0x{pred.connack:02X}, got {pkts}")
    if pred.codes and sc.version == 5 and got.closed:
        codes = [p.reason_code for p in pkts if isinstance(p, Disconnect)]
        if len(codes) != 1 or codes[0] not in pred.codes:
            want = "/".join(f"0x{c:02X}" for c in sorted(pred.codes))
            result.problems.append(f"{label}: expected DISCONNECT {want}, got {pkts}")


def good_client(port: int, watcher: Any, topic: str, count: int, stop: Callable[[], bool]) -> int:
    """A well-behaved 3.1.1 client publishing QoS 1 through the gateway; returns how many it sent."""
    from tests.rawclient import RawClient

    c = RawClient(port, 4)
    assert c.connect(f"good-{uid()}", "dev1", "pw1").reason_code == 0
    sent = 0
    for i in range(count):
        c.publish(topic, str(i).encode(), qos=1)
        sent += 1
        if stop():
            break
        gevent.sleep(0.002)
    c.disconnect()
    return sent


STORM_CONNECTIONS = 400
STORM_CONCURRENCY = 60


def storm(port: int, cases: Iterator[StormCase], concurrency: int, result: StormResult) -> None:
    pool = gevent.pool.Pool(concurrency)
    for sc in cases:
        pool.spawn(run_storm_case, port, sc, result)
    pool.join(timeout=120)
