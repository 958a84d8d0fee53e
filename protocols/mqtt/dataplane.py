"""The data plane of a proxied MQTT connection: the per-chunk packet logic of each direction, and the
state each direction keeps between chunks.

``process_up`` / ``process_down`` take the buffer and frame offsets of one chunk and return what to send
on. The common case, every packet allowed and unchanged, allocates nothing but the per-PUBLISH topic string
and writes the chunk as it came. Dropped or rewritten packets switch to splicing (``_Splice``).

``DirectionState`` is what one direction remembers (topic aliases, the QoS 2 flows the proxy answers
itself, topics already allowed, packet counters, the publish rate limiter). The connection owns one per
direction (``ProxiedConnection.up`` / ``.down``, connection.py) and hands it to the function of that
direction; only that direction's pump changes it, and the connection resets it when the grant changes.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import gevent

from ferryman.actors.contracts import Direction, Grant, Session
from ferryman.actors.metrics import PacketCounters

from . import codec
from .codec import Limits, publish_fields
from .constants import ReasonCode
from .context import ListenerContext
from .errors import MalformedPacket, ProtocolError
from .framing import Frame, Run
from .limits import RateLimiter
from .packets import Puback, Pubcomp, Publish, Pubrec, Suback, Unsuback
from .runs import same_known_topic

__all__ = ["AckPlans", "Connection", "DirectionState", "process_down", "process_up"]

#: SUBSCRIBE / UNSUBSCRIBE partly refused by the proxy, by (ack packet type, packet id): (the index of
#: each refused filter, how many filters the device sent, the code for the refused ones). Filled by the
#: uplink, used up by the downlink when the broker's SUBACK / UNSUBACK comes, to merge the two answers.
AckPlans = dict[tuple[int, int], tuple[list[int], int, int]]


class DirectionState:
    """What one direction (device -> broker, or broker -> device) of one connection remembers between
    chunks. Owned by the connection; changed by that direction's pump, and by ``grant_changed``."""

    __slots__ = (
        "alias_max",
        "aliases",
        "counters",
        "direction",
        "known_topics",
        "limiter",
        "local_rel",
        "unlearned",
    )

    def __init__(
        self, direction: Direction, counters: PacketCounters, limiter: RateLimiter | None = None
    ) -> None:
        self.direction = direction
        #: MQTT 5 topic aliases the sender set: alias -> topic.
        self.aliases: dict[int, str] = {}
        #: Aliases the receiver has not learned: the packet that set them was dropped, so the next one
        #: that uses the alias alone goes on with the topic in full.
        self.unlearned: set[int] = set()
        #: The highest topic alias the receiver accepts; None: not checked (the broker's CONNACK sets it
        #: for the uplink; a device's maximum is its own business).
        self.alias_max: int | None = None
        #: Packet ids of QoS 2 PUBLISHes the proxy answered itself (refused, dropped): the sender's
        #: PUBREL for them is answered here too.
        self.local_rel: set[int] = set()
        #: Raw topics already validated and allowed under the current grant (``_known_topic``).
        self.known_topics: set[bytes] = set()
        self.counters = counters
        #: The publish rate limit of the sender (the device's, on the uplink); None: none.
        self.limiter = limiter

    def grant_changed(self, topics_may_change: bool) -> None:
        """A new grant: what the old one allowed is forgotten. ``topics_may_change`` (other interceptors,
        which rewrite topics): every alias learned so far is sent in full again on its next use."""
        self.known_topics.clear()
        if topics_may_change:
            self.unlearned.update(self.aliases)


class Connection(Protocol):
    """What the data plane reads and changes of one connection (``connection.ProxiedConnection`` has this
    shape): a structural type, so this module need not import the connection that calls it."""

    ctx: ListenerContext
    session: Session | None
    grant: Grant
    limits: Limits
    version: int
    connected: bool
    device_disconnected: bool
    enhanced_auth: bool
    ack_plans: AckPlans

    @property
    def replies_held(self) -> bool:
        """The proxy's own answers to the device are held back until the broker's CONNACK has gone."""

    def intercept(self, packet: Any, direction: Direction) -> Any | None: ...
    def broker_accepted(self, properties: list[tuple[int, Any]]) -> None: ...


CONNECT, CONNACK, PUBLISH, PUBREL, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT = (
    1, 2, 3, 6, 8, 9, 10, 11, 14,
)  # fmt: skip
NOT_AUTHORIZED = int(ReasonCode.NOT_AUTHORIZED)
# A chunk of many small packets that each take the slow path (SUBSCRIBEs, say) may hold thousands: the
# loop lets the other greenlets run whenever it has worked this long (checked every SLICE_PACKETS packets),
# so one connection's chunk costs the others at most a few milliseconds at a time.
SLICE_SECONDS = 0.002
SLICE_PACKETS = 16


def packet_id_at(buf: bytes, pos: int, end: int) -> int:
    if end - pos < 2:
        raise MalformedPacket("packet too short for a packet identifier")
    return (buf[pos] << 8) | buf[pos + 1]


PUBACK, PUBREC, PUBCOMP, PINGREQ, AUTH = 4, 5, 7, 12, 15


def _check_control(conn: Connection, buf: bytes, first: int, body: int, end: int) -> None:
    """Validate a packet the pump otherwise passes on unread, so a malformed one is answered by the proxy
    (MQTT 5: DISCONNECT 0x81/0x82) instead of reaching the broker. Cheap for the common forms (an ack that
    is just a packet id, an empty PINGREQ or DISCONNECT); anything longer is decoded in full.

    An acknowledgement of packet identifier 0 is the client's protocol error (MQTT 2.2.1: identifiers are
    non-zero): the broker would drop the link and the client would hear "server busy" for its own fault."""
    ptype = first >> 4
    size = end - body
    if ptype == PINGREQ:
        if size:
            raise MalformedPacket("PINGREQ with a body")
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        if size != 2:
            if conn.version != 5 or size < 2:
                raise MalformedPacket(f"acknowledgement of {size} bytes")
            codec.decode(first, buf[body:end], 5, conn.limits)  # refuses packet identifier 0 too
        elif not (buf[body] | buf[body + 1]):
            raise ProtocolError(f"{_NAMES[ptype]} with packet identifier 0")
    elif ptype == AUTH and not conn.enhanced_auth:
        raise ProtocolError("AUTH without an Authentication Method in the CONNECT (MQTT 5, 4.12)")
    elif ptype in (DISCONNECT, AUTH) and size:
        if conn.version != 5:
            raise MalformedPacket("DISCONNECT with a body")
        codec.decode(first, buf[body:end], 5, conn.limits)


_NAMES = {PUBACK: "PUBACK", PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP"}


def _first_bytes(fixed: tuple[int, ...]) -> bytes:
    """A 256-entry table: 1 where a first byte (type and flags) is valid for this direction.
    PUBLISH may carry any flags but QoS 3 and DUP with QoS 0 (MQTT-3.3.1-2, 3.3.1-4)."""
    table = bytearray(256)
    for b in fixed:
        table[b] = 1
    for flags in range(16):
        qos = (flags >> 1) & 3
        if qos != 3 and not (flags & 8 and qos == 0):
            table[0x30 | flags] = 1
    return bytes(table)


# Device -> broker: PUBACK PUBREC PUBREL PUBCOMP SUBSCRIBE UNSUBSCRIBE PINGREQ DISCONNECT (+ AUTH, CONNECT on
# 5.0; CONNECT is refused later as a second CONNECT). Broker -> device: CONNACK, acks, SUBACK, UNSUBACK,
# PINGRESP (+ DISCONNECT and AUTH on 5.0).
_UP_COMMON = (0x10, 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0)
VALID_UP = {4: _first_bytes(_UP_COMMON), 5: _first_bytes((*_UP_COMMON, 0xF0))}
_DOWN_COMMON = (0x20, 0x40, 0x50, 0x62, 0x70, 0x90, 0xB0, 0xD0)
VALID_DOWN = {4: _first_bytes(_DOWN_COMMON), 5: _first_bytes((*_DOWN_COMMON, 0xE0, 0xF0))}


class _Splice:
    """The chunk rebuilt around dropped or replaced packets."""

    __slots__ = ("last", "pieces")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.last = 0

    def put(self, buf: bytes, start: int, end: int, replacement: bytes = b"") -> None:
        if start > self.last:
            self.pieces.append(buf[self.last : start])
        if replacement:
            self.pieces.append(replacement)
        self.last = end

    def result(self, buf: bytes, end: int) -> bytes:
        if end > self.last:
            self.pieces.append(buf[self.last : end])
        return b"".join(self.pieces)


CACHE_MAX = 256  # distinct topics remembered per connection and direction


def _known_topic(cache: set[bytes], buf: bytes, body: int, end: int, first: int, v5: bool) -> bool:
    """True when this PUBLISH's topic is one already validated and allowed on this connection, and the
    packet carries nothing that could change the answer (no properties, hence no topic alias).

    A device publishes to a handful of topics: for those, this replaces decoding, validation and the ACL
    match with one set lookup on the raw topic bytes. Anything unusual takes the full path."""
    if end - body < 2:
        return False
    tend = body + 2 + ((buf[body] << 8) | buf[body + 1])
    pos = tend
    if first & 6:  # QoS 1 or 2: a packet identifier, which must not be 0
        if tend + 2 > end or not (buf[tend] | buf[tend + 1]):
            return False
        pos = tend + 2
    if v5 and (pos >= end or buf[pos] != 0):
        return False
    return pos <= end and buf[body + 2 : tend] in cache


def _remember(cache: set[bytes], buf: bytes, body: int) -> None:
    if len(cache) >= CACHE_MAX:
        cache.clear()
    cache.add(buf[body + 2 : body + 2 + ((buf[body] << 8) | buf[body + 1])])


def _emit(buf: bytes, end: int, splice: _Splice | None) -> bytes:
    if splice is not None:
        return splice.result(buf, end)
    return buf if end == len(buf) else buf[:end]


def _settle_runs(
    buf: bytes,
    frames: list[Frame | Run],
    counts: list[int],
    valid: bytes,
    pass_all: bool,
    known: set[bytes] | None,
    v5: bool,
) -> list[Frame]:
    """Take the runs the grant lets through unread out of ``frames`` (counted here, and passed on by
    ``_emit`` with the bytes around them) and split the others into their packets for the
    packet-by-packet path. Only PUBLISH runs are judged as a block, by the same rule the per-packet loop
    applies to each: ``pass_all`` (every PUBLISH passes unread), else every topic ``known`` on this
    connection (``runs.same_known_topic``, the run-wide ``_known_topic``)."""
    out: list[Frame] = []
    for frame in frames:
        if len(frame) == 3:
            out.append(frame)
            continue
        start, body, end, size = frame
        first = buf[start]
        count = (end - start) // size
        if first >> 4 == PUBLISH and valid[first]:
            passes = pass_all or (
                known is not None and same_known_topic(known, buf, start, body, size, count, v5)
            )
            if passes:
                counts[PUBLISH] += count
                continue
        hl = body - start
        out.extend((s, s + hl, s + size) for s in range(start, end, size))
    return out


def _decode(conn: Connection, buf: bytes, start: int, body: int, end: int, up: bool = True) -> Any:
    """A whole packet; a client's (``up``) within the listener's element caps."""
    return codec.decode(buf[start], buf[body:end], conn.version, conn.limits if up else codec.NO_LIMITS)


def _pause(deadline: float) -> float:
    """Let the other greenlets run if this chunk's work has run past ``deadline``; the next deadline."""
    now = time.perf_counter()
    if now < deadline:
        return deadline
    gevent.sleep(0)
    return time.perf_counter() + SLICE_SECONDS


def _ack(conn: Connection, qos: int, pid: int, code: int, local_rel: set[int]) -> bytes | None:
    """The acknowledgement the proxy gives in place of the far side for a PUBLISH it did not pass on."""
    if qos == 1:
        return codec.encode(Puback(pid, code), conn.version)
    if qos == 2:
        if code < 0x80:
            local_rel.add(pid)  # the sender will PUBREL; answer it here
        return codec.encode(Pubrec(pid, code), conn.version)
    return None


def process_up(
    conn: Connection, up: DirectionState, buf: bytes, frames: list[Frame | Run], runs: int = 0
) -> tuple[bytes, list[bytes]]:
    """Device -> broker. Returns (bytes for the broker, replies for the device). ``up``: the state of
    this direction; ``runs``: how many of ``frames`` are runs (``Framer.feed_runs``)."""
    grant = conn.grant
    counts = up.counters.counts
    v5 = conn.version == 5
    chain = conn.ctx.chain
    valid = VALID_UP[conn.version]
    splice: _Splice | None = None
    replies: list[bytes] = []
    pass_all = grant.publish_all and not v5 and not chain.wants_publish
    plain = grant.publish_by_topic and not grant.interceptors and not chain.wants_publish
    cache = up.known_topics if plain else None
    last = frames[-1][2]
    packets = _settle_runs(buf, frames, counts, valid, pass_all, cache, v5) if runs else frames
    limits = conn.limits
    deadline = time.perf_counter() + SLICE_SECONDS
    # Until the broker's CONNACK has gone to the device its answers are held back (``conn.replies_held``,
    # bounded): a chunk sent before it is judged in one go, so that bound applies to all of it.
    sliced = not conn.replies_held
    for n, (start, body, end) in enumerate(packets):  # type: ignore[misc]
        if sliced and not n % SLICE_PACKETS:
            deadline = _pause(deadline)
        first = buf[start]
        if not valid[first]:
            raise MalformedPacket(f"invalid packet type or flags 0x{first:02x} from the client")
        ptype = first >> 4
        counts[ptype] += 1
        if ptype == PUBLISH:
            if pass_all:
                continue
            if cache is not None and _known_topic(cache, buf, body, end, first, v5):
                continue
            topic, alias, poff, pid = publish_fields(
                buf, body, end, first, conn.version, from_client=True, limits=limits
            )
            alias_only = not topic
            if alias is not None:
                if up.alias_max is not None and alias > up.alias_max:
                    raise ProtocolError(f"topic alias {alias} above the maximum {up.alias_max}", 0x94)
                if alias_only:
                    known = up.aliases.get(alias)
                    if known is None:
                        raise ProtocolError(f"unknown topic alias {alias}", 0x94)
                    topic = known
                else:
                    up.aliases[alias] = topic
            payload = b"" if plain else buf[poff:end]  # a topic-only grant never reads it
            qos = (first >> 1) & 3
            if not grant.auth_publish(topic, payload):
                conn.ctx.metrics.refusals.labels(conn.ctx.name, "publish").inc()
                if not v5 and conn.ctx.settings.refused_publish_v3 == "disconnect":
                    raise ProtocolError(f"PUBLISH to {topic!r} not authorized", NOT_AUTHORIZED)
                splice = splice or _Splice()
                splice.put(buf, start, end)
                if alias is not None and not alias_only:
                    up.unlearned.add(alias)
                reply = _ack(conn, qos, pid, NOT_AUTHORIZED if v5 else 0, up.local_rel)
                if reply:
                    replies.append(reply)
                continue
            if grant.interceptors or (alias_only and alias in up.unlearned):
                packet = _decode(conn, buf, start, body, end)
                packet.topic = topic
                new = conn.intercept(packet, Direction.UP) if grant.interceptors else packet
                splice = splice or _Splice()
                if new is None:
                    splice.put(buf, start, end)
                    reply = _ack(conn, qos, pid, 0, up.local_rel)
                    if reply:
                        replies.append(reply)
                    continue
                up.unlearned.discard(alias or 0)
                splice.put(buf, start, end, codec.encode(new, conn.version))
                if isinstance(new, Publish):
                    topic, payload = new.topic, new.payload
            elif cache is not None and not alias_only:
                _remember(cache, buf, body)
            if chain.wants_publish and conn.session is not None:
                chain.on_publish(conn.session, topic, payload)
            continue
        if ptype in (SUBSCRIBE, UNSUBSCRIBE):
            splice = _filters(conn, buf, start, body, end, splice, replies)
            continue
        _check_control(conn, buf, first, body, end)
        if ptype == PUBREL and up.local_rel:
            pid = packet_id_at(buf, body, end)
            if pid in up.local_rel:
                up.local_rel.discard(pid)
                splice = splice or _Splice()
                splice.put(buf, start, end)
                replies.append(codec.encode(Pubcomp(pid), conn.version))
        elif ptype == CONNECT:
            raise ProtocolError("second CONNECT on one connection")
        elif ptype == DISCONNECT:
            conn.device_disconnected = True
        elif grant.interceptors:
            splice = _intercept_other(conn, buf, start, body, end, splice, Direction.UP)
    return _emit(buf, last, splice), replies


def _filters(
    conn: Connection,
    buf: bytes,
    start: int,
    body: int,
    end: int,
    splice: _Splice | None,
    replies: list[bytes],
) -> _Splice | None:
    """SUBSCRIBE or UNSUBSCRIBE: judge each filter, pass the allowed ones on, and make sure the device
    gets its SUBACK / UNSUBACK with a code per filter, whoever answers (broker, proxy, or both merged)."""
    grant = conn.grant
    chain = conn.ctx.chain
    sub = buf[start] >> 4 == SUBSCRIBE
    packet = _decode(conn, buf, start, body, end)  # always: a malformed one is the proxy's to answer
    if sub:
        names = [s.topic_filter for s in packet.subscriptions]
        refused = {i for i, f in enumerate(names) if not grant.auth_subscribe(f)}
        ack_type, code = SUBACK, NOT_AUTHORIZED if conn.version == 5 else 0x80
    else:
        names = list(packet.topic_filters)
        refused = {i for i, f in enumerate(names) if not grant.auth_unsubscribe(f)}
        ack_type, code = UNSUBACK, NOT_AUTHORIZED
    allowed = [f for i, f in enumerate(names) if i not in refused]
    if refused:
        conn.ctx.metrics.refusals.labels(conn.ctx.name, "subscribe" if sub else "unsubscribe").inc(
            len(refused)
        )
    if allowed and conn.session is not None and (chain.wants_subscribe if sub else chain.wants_unsubscribe):
        (chain.on_subscribe if sub else chain.on_unsubscribe)(conn.session, allowed)
    if not refused and not grant.interceptors:
        return splice
    splice = splice or _Splice()
    if refused and allowed:
        conn.ack_plans[(ack_type, packet.packet_id)] = (sorted(refused), len(names), code)
        if sub:
            packet.subscriptions = [s for i, s in enumerate(packet.subscriptions) if i not in refused]
        else:
            packet.topic_filters = allowed
    new = conn.intercept(packet, Direction.UP) if allowed and grant.interceptors else packet
    if not allowed or new is None:
        # Nothing goes to the broker: the proxy answers every filter itself.
        conn.ack_plans.pop((ack_type, packet.packet_id), None)
        splice.put(buf, start, end)
        codes = [code] * len(names)
        ack = (
            Suback(packet.packet_id, codes)
            if sub
            else Unsuback(packet.packet_id, codes if conn.version == 5 else [])
        )
        replies.append(codec.encode(ack, conn.version))
        return splice
    splice.put(buf, start, end, codec.encode(new, conn.version))
    return splice


def _intercept_other(
    conn: Connection,
    buf: bytes,
    start: int,
    body: int,
    end: int,
    splice: _Splice | None,
    direction: Direction,
) -> _Splice | None:
    new = conn.intercept(_decode(conn, buf, start, body, end, direction is Direction.UP), direction)
    if new is None:
        splice = splice or _Splice()
        splice.put(buf, start, end)
        return splice
    encoded = codec.changed_bytes(buf[start:end], new, conn.version)
    if encoded is not None:
        splice = splice or _Splice()
        splice.put(buf, start, end, encoded)
    return splice


def process_down(
    conn: Connection, down: DirectionState, buf: bytes, frames: list[Frame | Run], runs: int = 0
) -> tuple[bytes, list[bytes], str]:
    """Broker -> device. Returns (bytes for the device, replies for the broker, a close reason or "").
    ``down``: the state of this direction; ``runs`` as for ``process_up``."""
    grant = conn.grant
    counts = down.counters.counts
    v5 = conn.version == 5
    valid = VALID_DOWN[conn.version]
    splice: _Splice | None = None
    replies: list[bytes] = []
    close_after = ""
    pass_all = grant.deliver_all and not v5
    cache = down.known_topics if grant.deliver_by_topic and not grant.interceptors else None
    last = frames[-1][2]
    packets = _settle_runs(buf, frames, counts, valid, pass_all, cache, v5) if runs else frames
    deadline = time.perf_counter() + SLICE_SECONDS
    for n, (start, body, end) in enumerate(packets):  # type: ignore[misc]
        if not n % SLICE_PACKETS:
            deadline = _pause(deadline)
        first = buf[start]
        if not valid[first]:
            raise MalformedPacket(f"invalid packet type or flags 0x{first:02x} from the broker")
        ptype = first >> 4
        counts[ptype] += 1
        if ptype == PUBLISH:
            if pass_all:
                continue
            if cache is not None and _known_topic(cache, buf, body, end, first, v5):
                continue
            topic, alias, _poff, pid = publish_fields(buf, body, end, first, conn.version)
            alias_only = not topic
            if alias is not None:
                if alias_only:
                    known = down.aliases.get(alias)
                    if known is None:
                        raise ProtocolError(f"broker used unknown topic alias {alias}", 0x94)
                    topic = known
                else:
                    down.aliases[alias] = topic
            qos = (first >> 1) & 3
            new: Any = None
            if grant.interceptors:
                packet = _decode(conn, buf, start, body, end, up=False)
                packet.topic = topic
                new = conn.intercept(packet, Direction.DOWN)
                if new is None:
                    splice = splice or _Splice()
                    splice.put(buf, start, end)
                    reply = _ack(conn, qos, pid, 0, down.local_rel)
                    if reply:
                        replies.append(reply)
                    continue
                if isinstance(new, Publish):
                    topic = new.topic
            if not grant.auth_deliver(topic):
                conn.ctx.metrics.refusals.labels(conn.ctx.name, "deliver").inc()
                splice = splice or _Splice()
                splice.put(buf, start, end)
                if alias is not None and not alias_only:
                    down.unlearned.add(alias)
                reply = _ack(conn, qos, pid, 0, down.local_rel)
                if reply:
                    replies.append(reply)
                continue
            if new is not None or (alias_only and alias in down.unlearned):
                if new is None:
                    new = _decode(conn, buf, start, body, end, up=False)
                    new.topic = topic
                down.unlearned.discard(alias or 0)
                splice = splice or _Splice()
                splice.put(buf, start, end, codec.encode(new, conn.version))
            elif cache is not None and not alias_only:
                _remember(cache, buf, body)
        elif (ptype in (SUBACK, UNSUBACK)) and conn.ack_plans:
            plan = conn.ack_plans.pop((ptype, packet_id_at(buf, body, end)), None)
            if plan is not None:
                ack = _decode(conn, buf, start, body, end, up=False)
                refused, total, code = plan
                theirs = iter(ack.reason_codes)
                if ptype == SUBACK or v5:
                    ack.reason_codes = [code if i in refused else next(theirs, code) for i in range(total)]
                splice = splice or _Splice()
                splice.put(buf, start, end, codec.encode(ack, conn.version))
        elif ptype == PUBREL and down.local_rel:
            pid = packet_id_at(buf, body, end)
            if pid in down.local_rel:
                down.local_rel.discard(pid)
                splice = splice or _Splice()
                splice.put(buf, start, end)
                replies.append(codec.encode(Pubcomp(pid), conn.version))
        elif ptype == CONNACK and not conn.connected:
            code = buf[body + 1] if body + 1 < end else 0xFF
            if code == 0:
                # MQTT 5: the broker's limits for this session (keepalive, topic aliases) are properties
                conn.broker_accepted(_decode(conn, buf, start, body, end, up=False).properties if v5 else [])
            else:
                close_after = f"broker refused the CONNECT with code {code}"
        elif ptype == DISCONNECT:
            close_after = "broker sent DISCONNECT"
        elif grant.interceptors:
            splice = _intercept_other(conn, buf, start, body, end, splice, Direction.DOWN)
    return _emit(buf, last, splice), replies, close_after
