"""One proxied MQTT connection: a device socket, its upstream broker socket, and the state between them.

``ProxiedConnection`` owns everything of one connection: the two sockets, the CONNECT handshake, the grant,
the state of each direction (``up`` and ``down``, a ``dataplane.DirectionState`` each) and the close. Each
direction is one greenlet, its pump, running ``uplink`` or ``downlink``: read a chunk, frame every packet in
it, let ``dataplane.process_up`` / ``process_down`` look at the packets the grant must judge, and write the
chunk on with one ``sendall``. Packets nobody changes reach the other side byte for byte. The connection's
actors (connection_actors.py) own the lifecycle and apply control messages (a new grant, a disconnect
order) through this object's public methods.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.lock import Semaphore
from loguru import logger

from ferryman.actors.client_ids import identity_of, session_lifetime
from ferryman.actors.contracts import (
    Direction,
    Grant,
    Refusal,
    RefusalCode,
    Session,
    SessionControl,
    next_session_id,
)
from ferryman.actors.intercept import run_interceptors
from ferryman.actors.metrics import PacketCounters
from ferryman.protocols.tls.server import NO_PEER

from . import codec
from .coalesce import ReadCoalescer
from .codec import Limits
from .constants import ConnackV3, ReasonCode
from .context import ListenerContext, Parkable, Stream
from .dataplane import AckPlans, DirectionState, process_down, process_up
from .errors import (
    MessageRateTooHigh,
    MqttError,
    ProtocolError,
    TooManyElements,
    UnsupportedProtocolVersion,
)
from .framing import Frame, Framer, Run
from .limits import RateLimiter
from .packets import Connack, Connect, Disconnect
from .parking import Parked, PumpPark
from .refusals import connack_code, disconnect_code, metric_reason

__all__ = ["ProxiedConnection"]

CHUNK = 65536
# The pumps yield to the other greenlets regularly: gevent switches only when a socket would block, and a
# flooding device (or a broker faster than the device) never does. Device -> broker pumps yield before
# every read, broker -> device pumps every FAIR_READS_DOWN reads: when the gateway is short of CPU it
# delivers before it accepts more, so a flood backs up into the publishers' TCP sockets instead of being
# accepted, passed to the broker and dropped there (QoS 0) for want of a reader on the way out.
FAIR_READS_DOWN = 8
CONNECT = 1
REASON_STRING = 31  # MQTT 5 properties
AUTHENTICATION_METHOD = 21
SERVER_KEEP_ALIVE = 19
TOPIC_ALIAS_MAXIMUM = 34
KEEP_ALIVE_TIMEOUT = 0x8D
CLIENT_IDENTIFIER_NOT_VALID = 0x85
SESSION_EXPIRY_INTERVAL = 0x11
SESSION_TAKEN_OVER = int(ReasonCode.SESSION_TAKEN_OVER)
MAX_EARLY_REPLIES = 1000  # answers held back until the broker's CONNACK (bounds a flooding client)
# Seconds after a newer connection with the same client id went to the broker within which the broker
# dropping this one is its session takeover (0x8E to an MQTT 5 device), not an outage (0x89).
TAKEOVER_WINDOW = 30.0


class ProxiedConnection:
    """One device connection and its upstream: the owner of all its state. Used only from this
    connection's greenlets (its two pumps and its actors')."""

    # Slots: one per connection, and an idle connection's memory is mostly such objects (parking.py).
    __slots__ = (
        "_claimed",
        "_coalescer",
        "_device_lock",
        "_down_framer",
        "_down_reads",
        "_early",
        "_lifetime",
        "_taken_over_at",
        "_up_framer",
        "_upstream_lock",
        "ack_plans",
        "addr",
        "close_reason",
        "closed",
        "connected",
        "control",
        "ctx",
        "destination",
        "device",
        "device_disconnected",
        "down",
        "down_park",
        "enhanced_auth",
        "grant",
        "limits",
        "on_close",
        "peer",
        "session",
        "up",
        "up_park",
        "upstream",
        "version",
    )

    def __init__(self, ctx: ListenerContext, sock: Stream, addr: tuple[str, int]) -> None:
        self.ctx = ctx
        self.device = sock
        self.addr = (str(addr[0]), int(addr[1]))
        self.upstream: Stream | None = None
        self.session: Session | None = None
        self.grant: Grant = Grant.nothing()
        self.version = 4
        self.closed = False
        self.connected = False  # the broker accepted the CONNECT (on_connect sent)
        self.close_reason = ""
        self._device_lock = Semaphore()
        self._upstream_lock = Semaphore()
        # What each direction remembers between chunks (aliases, QoS 2 flows answered here, allowed topics,
        # packet counters, the device's publish rate limit): changed by that direction's pump only.
        self.up = DirectionState(
            Direction.UP,
            PacketCounters(ctx.metrics, ctx.name, "up"),
            RateLimiter.for_settings(ctx.settings),
        )
        self.down = DirectionState(Direction.DOWN, PacketCounters(ctx.metrics, ctx.name, "down"))
        # SUBSCRIBE / UNSUBSCRIBE partly refused here: how to merge the broker's answer (``dataplane``).
        self.ack_plans: AckPlans = {}
        self.device_disconnected = False  # the device sent DISCONNECT
        self.enhanced_auth = False  # MQTT 5: the CONNECT named an Authentication Method (AUTH allowed)
        # The proxy's own answers (refusal acks, local SUBACKs) to packets that arrived before the broker's
        # CONNACK: held back until it has been forwarded, as the first packet a client gets must be the
        # CONNACK (MQTT-3.2.0-1). None once it has.
        self._early: list[bytes] | None = []
        self.control: SessionControl | None = None
        self.peer = NO_PEER  # the verified client certificate, on mTLS listeners
        #: where the device connected to at a load balancer in front (its PROXY header); None: here
        self.destination: tuple[str, int] | None = None
        self.on_close: list[Callable[[str], None]] = []
        # The listener's caps on the elements of one client packet (codec.Limits).
        self.limits = Limits(
            int(getattr(ctx.settings, "max_user_properties", 64)),
            int(getattr(ctx.settings, "max_topic_filters", 128)),
        )
        # The client id this connection holds in the gateway's binding (None: none), how long the broker
        # keeps its session once it ends, and when a newer connection took it over (0: never).
        self._claimed: str | None = None
        self._lifetime = 0.0
        self._taken_over_at = 0.0
        # Each pump's parking (parking.py) and the state it resumes with (made when the pump first runs).
        self.up_park = PumpPark()
        self.down_park = PumpPark()
        self._up_framer: Framer | None = None
        self._down_framer: Framer | None = None
        self._coalescer: ReadCoalescer | None = None
        self._down_reads = 0

    def set_grant(self, grant: Grant) -> None:
        """Judge everything from now on by ``grant``; what the old grant allowed is forgotten. When the
        interceptors change (they may change topics), MQTT 5 topic aliases are sent in full again."""
        relearn = self.version == 5 and grant.interceptors != self.grant.interceptors
        self.grant = grant
        self.up.grant_changed(relearn)
        self.down.grant_changed(relearn)

    @property
    def replies_held(self) -> bool:
        """The proxy's own answers to the device wait for the broker's CONNACK to have gone first."""
        return self._early is not None

    def broker_accepted(self, properties: list[tuple[int, Any]]) -> None:
        """The broker accepted the CONNECT (its CONNACK, with these MQTT 5 ``properties``, is on its way
        to the device): its limits for the session apply, and the handler chain hears of the connect."""
        self.connected = True
        if self.version == 5:
            server_keepalive = next((v for p, v in properties if p == SERVER_KEEP_ALIVE), None)
            if server_keepalive is not None:
                self.set_keepalive(int(server_keepalive))
            self.up.alias_max = int(next((v for p, v in properties if p == TOPIC_ALIAS_MAXIMUM), 0))
        if self.session is not None:
            self.ctx.chain.on_connect(self.session, self.grant)

    # ------------------------------------------------------------------------------------------ writes
    def send_device(self, data: bytes) -> None:
        with self._device_lock:
            self.device.sendall(data)

    def send_upstream(self, data: bytes) -> None:
        assert self.upstream is not None
        with self._upstream_lock:
            self.upstream.sendall(data)

    # ------------------------------------------------------------------------------------------ close
    def close(self, reason: str, wait: float = 0.0) -> None:
        """Idempotent: shut both sockets (which ends both pumps) and run the close callbacks once.

        With ``wait`` (graceful shutdown), a write to the broker already under way may finish first, for up
        to ``wait`` seconds, so the broker never gets half a packet."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.up_park.unpark()  # before the sockets close: their descriptor numbers are reused at once
        self.down_park.unpark()
        held = wait > 0 and self.upstream is not None and self._upstream_lock.acquire(timeout=wait)
        try:
            for sock in (self.device, self.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
        finally:
            if held:
                self._upstream_lock.release()
        if self._claimed is not None:
            self.ctx.chain.client_ids.release(self._claimed, self, self._lifetime if self.connected else None)
        if self.connected and self.session is not None:
            self.ctx.chain.on_disconnect(self.session, reason)
        callbacks, self.on_close = self.on_close, []
        for cb in callbacks:
            cb(reason)
        # The callbacks (actors' bound methods) and the pumps' greenlets refer back to this connection: let
        # go of them, so that a closed connection is freed by its reference count, not left to the cyclic
        # garbage collector, whose full passes over every live connection cost a held fleet dearly.
        self.up_park.greenlet = self.down_park.greenlet = None
        logger.debug("connection {}:{} closed: {}", *self.addr, reason)

    def kick(self, reason: str, code: int, wait: float = 0.0) -> None:
        """Close on the gateway's initiative; MQTT 5 clients are first told why with a DISCONNECT.

        The DISCONNECT waits for a write to the device already under way (so it never lands inside another
        packet) for up to ``wait`` seconds, or not at all when ``wait`` is 0 and the socket is busy."""
        if self.closed:
            return
        if self.version == 5 and self.session is not None:
            packet = codec.encode(Disconnect(code, [(REASON_STRING, reason[:200])]), 5)
            if self._device_lock.acquire(blocking=wait > 0, timeout=wait or None):
                try:
                    with contextlib.suppress(OSError), gevent.Timeout(wait or 1.0, False):
                        self.device.sendall(packet)
                finally:
                    self._device_lock.release()
        self.close(reason, wait)

    def kick_refusal(self, refusal: Refusal, wait: float = 0.0) -> None:
        self.kick(refusal.reason or refusal.code.value, disconnect_code(refusal.code), wait)

    def _fail(self, exc: MqttError, direction: Direction) -> None:
        self.ctx.metrics.errors.labels(self.ctx.name, type(exc).__name__).inc()
        logger.info("closing {}:{}: {} ({})", *self.addr, exc, direction.value)
        if direction is Direction.UP:
            self.kick(str(exc), exc.reason_code)
        else:
            # The broker sent something invalid: the device is not at fault, the upstream is unusable.
            self._upstream_lost(f"invalid packet from the broker: {exc}")

    def _upstream_lost(self, reason: str) -> None:
        """The broker side ended without the device asking: close, telling MQTT 5 devices to retry later."""
        if self.closed:  # we closed it ourselves (the device left, or was refused): not a broker fault
            return
        if self.device_disconnected:
            self.close(reason)
            return
        if self._taken_over_at and time.monotonic() - self._taken_over_at < TAKEOVER_WINDOW:
            # mosquitto drops the older connection of a client id without a word (no DISCONNECT 0x8E).
            logger.info("connection {}:{}: session taken over by a newer connection", *self.addr)
            self.kick("session taken over by another connection", SESSION_TAKEN_OVER)
            return
        self.ctx.metrics.errors.labels(self.ctx.name, "upstream_lost").inc()
        logger.info("connection {}:{}: {}", *self.addr, reason)
        self.kick(reason, disconnect_code(RefusalCode.SERVER_UNAVAILABLE))

    def taken_over(self) -> None:
        """A newer connection with this client id is going to the broker, which will drop this one's
        session (``ClientIdBinding.claim``)."""
        self._taken_over_at = time.monotonic()

    def set_keepalive(self, seconds: int) -> None:
        """Enforce the keepalive: a device silent for ``keepalive_factor`` x ``seconds`` is disconnected
        (5.0: 0x8D). The broker may override the device's value (Server Keep Alive in CONNACK)."""
        factor = self.ctx.settings.keepalive_factor
        self.device.settimeout(seconds * factor if seconds and factor else None)

    # ------------------------------------------------------------------------------------------ connect
    def read_connect(self, timeout: float | None = None) -> tuple[Connect, bytes, bytes] | None:
        """Read the first packet within the connect timeout. Returns (connect, its bytes, what followed)."""
        framer = Framer(self.ctx.settings.max_packet_size)
        with gevent.Timeout(timeout or self.ctx.settings.connect_timeout, False):
            while True:
                data = self.device.recv(CHUNK)
                if not data:
                    self.close("closed before CONNECT")
                    return None
                buf, frames = framer.feed(data)
                if frames:
                    start, body, end = frames[0]
                    if buf[start] >> 4 != CONNECT:
                        raise ProtocolError("first packet is not CONNECT")
                    self.version = 5 if _connect_level(buf, body, end) == 5 else 4
                    connect = codec.decode(buf[start], buf[body:end], 5, self.limits)
                    assert isinstance(connect, Connect)
                    return connect, buf[start:end], buf[end:]
        self.ctx.metrics.refusals.labels(self.ctx.name, "connect_timeout").inc()
        self.close("no CONNECT within the connect timeout")
        return None

    def refuse_connect(self, code: int, reason: str, metric: str) -> None:
        if metric:
            self.ctx.metrics.refusals.labels(self.ctx.name, metric).inc()
        with contextlib.suppress(OSError):
            self.send_device(codec.encode(Connack(False, code), self.version))
        self.close(reason)

    def establish(self, dial: Callable[[], Stream]) -> bytes | None:
        """CONNECT -> authorize -> dial upstream -> forward CONNECT. Returns the bytes that followed the
        CONNECT (to be proxied), or None when the connection ended here."""
        try:
            first = self.read_connect()
        except UnsupportedProtocolVersion as exc:
            # The 3.1.1 return code, in a 3.1.1 CONNACK: the one a client of any level reads (MQTT-3.1.2-2).
            self.version = 4
            self.refuse_connect(ConnackV3.UNACCEPTABLE_PROTOCOL_VERSION, str(exc), "malformed")
            return None
        except MqttError as exc:
            metric = "elements" if isinstance(exc, TooManyElements) else "malformed"
            if self.version == 5:
                self.refuse_connect(exc.reason_code, str(exc), metric)
            elif exc.reason_code == CLIENT_IDENTIFIER_NOT_VALID:
                self.refuse_connect(ConnackV3.IDENTIFIER_REJECTED, str(exc), metric)  # MQTT-3.1.3-8
            else:
                self.ctx.metrics.refusals.labels(self.ctx.name, metric).inc()
                self.close(f"bad CONNECT: {exc}")
            return None
        except (OSError, ValueError) as exc:  # reset or closed before the CONNECT was whole: no answer
            self.close(f"client socket before CONNECT: {exc}")
            return None
        if first is None:
            return None
        connect, raw, rest = first
        self.version = 5 if connect.protocol_level == 5 else 4
        self.enhanced_auth = any(pid == AUTHENTICATION_METHOD for pid, _ in connect.properties)
        self.session = Session(
            id=next_session_id(),
            listener=self.ctx.name,
            protocol=self.ctx.protocol,
            remote_addr=self.addr,
            protocol_version=connect.protocol_level,
            client_id=connect.client_id,
            username=connect.username,
            password=connect.password,
            control=self.control,
            peer_cert=self.peer.der,
            identity=self.peer.identity,
            peer_sans=self.peer.sans,
        )
        decision = self.ctx.chain.connect(self.session)
        if isinstance(decision, Refusal):
            logger.info("refused CONNECT of {!r}: {}", self.session, decision.reason or decision.code.value)
            self.refuse_connect(
                connack_code(decision.code, self.version), decision.reason, metric_reason(decision.code)
            )
            return None
        self.set_grant(decision)
        will = connect.will
        if will is not None and not decision.auth_will(will.topic, will.payload):
            logger.info("refused CONNECT of {!r}: will topic {!r} not allowed", self.session, will.topic)
            self.refuse_connect(
                connack_code(RefusalCode.NOT_AUTHORIZED, self.version), "will not authorized", "will"
            )
            return None
        upstream_connect = connect  # what the broker will see (its client id is the one to bind)
        if decision.interceptors:
            new = self.intercept(connect, Direction.UP)
            if new is None:
                self.refuse_connect(
                    connack_code(RefusalCode.NOT_AUTHORIZED, self.version),
                    "dropped by interceptor",
                    "intercept",
                )
                return None
            raw = codec.changed_bytes(raw, new, self.version) or raw
            if isinstance(new, Connect):
                upstream_connect = new
        if not self._claim(upstream_connect, decision):
            return None
        try:
            self.upstream = dial()
        except OSError as exc:
            logger.warning("upstream {} unreachable: {}", self.ctx.target_label, exc)
            self.refuse_connect(
                connack_code(RefusalCode.SERVER_UNAVAILABLE, self.version),
                f"upstream: {exc}",
                "upstream_unavailable",
            )
            return None
        self.up.counters.counts[CONNECT] += 1
        try:
            self.send_upstream(raw)
        except OSError as exc:  # e.g. a TLS 1.3 target refusing our client certificate after the handshake
            logger.warning("upstream {} refused the connection: {}", self.ctx.target_label, exc)
            self.refuse_connect(
                connack_code(RefusalCode.SERVER_UNAVAILABLE, self.version),
                f"upstream: {exc}",
                "upstream_unavailable",
            )
            return None
        self.set_keepalive(connect.keepalive)
        return rest

    def _claim(self, connect: Connect, grant: Grant) -> bool:
        """Take the client id the broker will see in the gateway-wide binding (actors/client_ids.py), or
        refuse the CONNECT: CONNACK 0x85 Client Identifier not valid (3.1.1: 2, identifier rejected) for
        the bridge's reserved id and for an id bound to another identity. 0x85 rather than 0x87 Not
        authorized: the credentials are fine, this client id is not for them; another one will do."""
        assert self.session is not None
        client_id = connect.client_id
        refused = self.ctx.chain.client_ids.claim(
            client_id, identity_of(self.session.username, self.session.identity), self, grant.take_client_id
        )
        if refused:
            why = (
                "the bridge's client id is reserved"
                if refused == "reserved"
                else "client id in use by another identity"
            )
            logger.info("refused CONNECT of {!r}: {}", self.session, why)
            code = CLIENT_IDENTIFIER_NOT_VALID if self.version == 5 else ConnackV3.IDENTIFIER_REJECTED
            self.refuse_connect(code, why, "client_id")
            return False
        if client_id:
            expiry = next((v for p, v in connect.properties if p == SESSION_EXPIRY_INTERVAL), None)
            v5 = connect.protocol_level == 5
            self._lifetime = session_lifetime(v5, connect.clean_start, expiry)  # type: ignore[arg-type]
            self._claimed = client_id
        return True

    # ------------------------------------------------------------------------------------------ helpers
    def intercept(self, packet: Any, direction: Direction) -> Any | None:
        """``packet`` as the grant's interceptors leave it (None: dropped)."""
        assert self.session is not None
        return run_interceptors(self.grant, self.session, packet, direction)

    # ------------------------------------------------------------------------------------------ pumps
    def run_uplink(self, data: bytes) -> bool:
        """The uplink pump (device -> broker) in the calling greenlet, from ``data`` (what followed the
        CONNECT, or b"" when resuming), until the connection ends (closed here, whatever ended it) or the
        pump parks (True: it resumes in a new greenlet when the device sends, parking.py)."""
        parked = False
        try:
            parked = self._uplink(data)
        except Exception as exc:  # a bug must cost one connection, never the listener
            logger.opt(exception=exc).error("connection {}:{} failed", *self.addr)
        finally:
            if not parked:
                self.close(self.close_reason or "ended")
        return parked

    def _uplink(self, data: bytes) -> bool:
        framer = self._up_framer
        if framer is None:
            framer = self._up_framer = Framer(self.ctx.settings.max_packet_size)
        up = self.up
        counters = up.counters
        limiter = up.limiter
        park = self.up_park
        park.greenlet = gevent.getcurrent()
        now = time.monotonic
        try:
            while True:
                if data:
                    buf, frames = framer.feed_runs(data)
                    if frames:
                        if limiter is not None:
                            self._limit(limiter, buf, frames, len(data))
                        out, replies = process_up(self, up, buf, frames, framer.last_runs)
                        if out:
                            self.send_upstream(out)
                        if replies:
                            if self._early is not None:
                                self._early.extend(replies)
                                if len(self._early) > MAX_EARLY_REPLIES:
                                    raise ProtocolError("too many refused packets before the CONNACK")
                            else:
                                self.send_device(b"".join(replies))
                    counters.flush(len(data))
                gevent.sleep(0)  # a socket that always has data never blocks, so never lets others run
                park.waiting_since = now()
                data = self.device.recv(CHUNK)
                park.waiting_since = 0.0
                if not data:
                    self.close("client closed the connection")
                    return False
        except Parked:
            return self._park_uplink()
        except TimeoutError:
            self._keepalive_expired()
        except MqttError as exc:
            self._fail(exc, Direction.UP)
        except (OSError, ValueError) as exc:  # ValueError: an SSL socket closed by another greenlet
            self.close(f"client socket: {exc}")
        return False

    def _park_uplink(self) -> bool:
        since = self.up_park.waiting_since
        device = self.device
        if self.closed:
            return False
        if not isinstance(device, Parkable):  # cannot wait without a greenlet: go on in a new one
            self.up_park.waiting_since = 0.0
            gevent.spawn(self._resume_uplink)
            return True
        timeout = device.gettimeout()  # the keepalive deadline runs on while parked
        if timeout is None:
            self.up_park.park(device.fileno(), self._resume_uplink)
        else:
            within = timeout - (time.monotonic() - since)
            self.up_park.park(device.fileno(), self._resume_uplink, self._keepalive_expired, within)
        return True

    def _resume_uplink(self) -> None:
        self.run_uplink(b"")

    def _keepalive_expired(self) -> None:
        self.ctx.metrics.refusals.labels(self.ctx.name, "keepalive").inc()
        self.kick("keepalive timeout", KEEP_ALIVE_TIMEOUT)

    def _limit(self, limiter: RateLimiter, buf: bytes, frames: list[Frame | Run], nbytes: int) -> None:
        """Hold the chunk until the device is within its publish rate, or disconnect it."""
        publishes = sum((f[2] - f[0]) // f[3] if len(f) == 4 else 1 for f in frames if buf[f[0]] >> 4 == 3)
        debt = limiter.take(publishes, nbytes)
        if debt <= 0:
            return
        if self.ctx.settings.rate_limit_action == "disconnect":
            self.ctx.metrics.refusals.labels(self.ctx.name, "rate").inc()
            raise MessageRateTooHigh(f"publishing faster than {self.ctx.settings.publish_rate:g}/s")
        self.ctx.metrics.refusals.labels(self.ctx.name, "throttled").inc()
        gevent.sleep(debt)  # not reading meanwhile: TCP pushes back on the device

    def downlink(self) -> None:
        """Broker -> device. Runs in a greenlet of the upstream actor's until the connection ends or the
        pump parks; a parked pump resumes here in a new greenlet when the broker sends (parking.py)."""
        upstream = self.upstream
        assert upstream is not None
        framer = self._down_framer
        if framer is None:  # the broker enforces its own limits; the client's maximum is its own business
            framer = self._down_framer = Framer()
        coalescer = self._coalescer
        if coalescer is None:
            coalescer = self._coalescer = ReadCoalescer(upstream, self.ctx.settings.flood_batch_wait)
        down = self.down
        counters = down.counters
        park = self.down_park
        park.greenlet = gevent.getcurrent()
        now = time.monotonic
        try:
            while True:
                self._down_reads += 1
                if not self._down_reads % FAIR_READS_DOWN:
                    gevent.sleep(0)
                try:
                    coalescer.wait()
                    park.waiting_since = now()
                    data = upstream.recv(CHUNK)
                    park.waiting_since = 0.0
                except Parked:
                    park.waiting_since = 0.0
                    if self.closed:
                        return
                    if isinstance(upstream, Parkable):
                        park.park(upstream.fileno(), self.downlink)
                        return
                    continue  # cannot wait without a greenlet: this one goes on
                except (OSError, ValueError) as exc:
                    self._upstream_lost(f"broker socket: {exc}")
                    return
                coalescer.seen(len(data))
                if not data:
                    self._upstream_lost("broker closed the connection")
                    return
                buf, frames = framer.feed_runs(data)
                if frames:
                    out, upstream_replies, close_after = process_down(
                        self, down, buf, frames, framer.last_runs
                    )
                    if self._early is not None and self.connected:
                        out += b"".join(self._early)  # in the same write, right after the CONNACK
                        self._early = None
                    if out:
                        self.send_device(out)
                    for reply in upstream_replies:
                        self.send_upstream(reply)
                    if close_after:
                        self.close(close_after)
                        return
                counters.flush(len(data))
        except MqttError as exc:
            self._fail(exc, Direction.DOWN)
        except (OSError, ValueError) as exc:
            self.close(f"socket: {exc}")


def _connect_level(buf: bytes, body: int, end: int) -> int:
    """The protocol level byte of a CONNECT (0 when the packet is too short to hold one)."""
    if body + 2 > end:
        return 0
    name_len = (buf[body] << 8) | buf[body + 1]
    pos = body + 2 + name_len
    return buf[pos] if pos < end else 0
