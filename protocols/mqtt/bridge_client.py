"""The bridge's own MQTT session to the broker: one long-lived paho-mqtt client in a Pykka actor.

MQTT 5, persistent session (Clean Start 0 and a Session Expiry Interval, so the broker keeps the
subscriptions and queues QoS 1 messages while the bridge is away), QoS 1 by default, reconnection with
exponential backoff and a re-subscription of every remembered filter on every (re)connect.

Threads and greenlets. The process is gevent-monkey-patched first, so paho's ``loop_start()`` thread is a
greenlet in the hub's thread, as is this actor's own (``pykka.ThreadingActor``). paho's callbacks run in
the network-loop greenlet; they touch only small, lock-guarded bookkeeping and never ``ask`` an actor.

API (through ``MqttBridgeClient.start(...).proxy()``, or ``ask``/``tell`` of ``Call`` messages):

- ``subscribe(topic_filter, qos=1) -> bool``: remembers the filter (it is subscribed again on every
  connect) and, when connected, waits up to ``ack_timeout`` for the SUBACK. True if the broker granted
  it now; False if not connected (the filter stays remembered and is subscribed on the next connect),
  timed out, or refused (a refused filter is forgotten).
- ``unsubscribe(topic_filter) -> bool``: forgets the filter; when connected, waits for the UNSUBACK.
- ``publish(topic, payload, qos=1, retain=False) -> bool``: True when the PUBACK arrives (QoS 1/2) or
  the packet is written (QoS 0); False on a refusal (reason code >= 0x80), a full queue, or no PUBACK
  within ``publish_timeout``. It blocks the actor while it waits: use ``publish_async`` for throughput.
- ``publish_async(...) -> Delivery``: queues the message and returns at once; ``Delivery.wait(timeout)``
  returns the same bool ``publish`` would, from the caller's greenlet.
- ``publish_many([(topic, payload, qos, retain), ...]) -> list[Delivery]``: ``publish_async`` for each, in
  order, in one actor message (and one wake-up of paho's network loop, which then writes the batch with
  as few socket writes as it can).
- ``is_connected() -> bool``, ``filters() -> dict[str, int]`` (remembered filter -> QoS),
  ``connect_count() -> int`` (successful CONNACKs so far).

Topics and filters are checked before they reach paho (``ferryman.actors.topics.validate_topic_name`` /
``validate_topic_filter``, the same rules everywhere): a topic the broker would answer by closing the link
(a control character, a non-character, a wildcard, bad UTF-8) would otherwise cut off every user of this one
session and, being in flight, be re-sent after every reconnect. A refused publish resolves at once with
``Delivery.invalid`` set (the caller maps it to its protocol's "bad request"); a refused filter makes
``subscribe`` / ``unsubscribe`` return False and is never remembered.

Poison messages. Should a message still make the broker close the link (a rule of a broker this check does
not know), paho would re-send it after each reconnect for ever. The oldest unacknowledged QoS 1/2 message
when the link drops within ``poison_window`` seconds of its (re)sending gets a strike; after
``poison_after`` strikes in a row it is removed from paho's queue, its ``Delivery`` fails and an error is
logged (``health()`` counts it in ``dropped``). This touches paho's private ``_out_messages``: checked
against the pinned paho-mqtt 2.2.x at start-up (``_check_paho_internals``).

Health (``health()``, shown by the gateway's /health): ``status`` is ``ok``, ``disconnected`` or
``flapping`` (``flap_count`` link losses within ``flap_window`` seconds and no connection stable for
``stable_after`` seconds since): a session that keeps reconnecting is not ok.

Publishing while disconnected: QoS 1/2 messages are kept in paho's outgoing queue and sent when the
session is back (with a PUBACK then, so a ``Delivery`` waited long enough still resolves True). The queue
is bounded by ``max_queued`` (paho's ``max_queued_messages_set``, counting in-flight messages too); past
it ``publish`` returns False at once. QoS 0 messages are dropped while disconnected (False).

Incoming messages go to ``sink``, a callable given at construction, called directly in paho's
network-loop greenlet with a ``ferryman.actors.contracts.Message``: ``kind="mqtt.message"``, ``topic``,
``payload`` (bytes), ``source="mqtt"`` and ``headers`` with ``qos``, ``retain`` ("0"/"1"), and, when
present, ``content_type``, ``response_topic`` and the MQTT 5 user properties. The sink must be quick and
must not block (``actor_ref.tell`` is the intended use): it runs on the network loop. Its exceptions are
logged and swallowed. QoS 1 means at least once: a sink can see a message twice.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import pykka
from loguru import logger
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ferryman.actors.contracts import Message
from ferryman.actors.subscriptions import SubscriptionHub
from ferryman.actors.topics import validate_topic_filter, validate_topic_name

__all__ = ["Delivery", "MqttBridgeClient", "Sink", "parse_url"]

Sink = Callable[[Message], None]

#: Keep at most this many acknowledgements that arrived before anyone waited for them.
_EARLY_LIMIT = 1024


def parse_url(url: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``mqtt://``; port 1883 when omitted) -> (host, port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "mqtt"):
        raise ValueError(f"unsupported MQTT url {url!r}: expected tcp://host:port")
    if not parts.hostname:
        raise ValueError(f"MQTT url {url!r} has no host")
    return parts.hostname, parts.port or 1883


@dataclass(eq=False)
class Delivery:
    """The outcome of one publish (or subscribe / unsubscribe): resolved by the broker's acknowledgement."""

    mid: int
    _event: threading.Event = field(default_factory=threading.Event, repr=False)
    ok: bool = False
    reason: str = ""
    #: True when the message was refused before it reached the broker because the caller's topic is not
    #: one a broker accepts: the caller's mistake (HTTP 400, CoAP 4.00), not the broker's or the bridge's.
    invalid: bool = False

    def resolve(self, ok: bool, reason: str = "") -> None:
        if not self._event.is_set():
            self.ok, self.reason = ok, reason
            self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once acknowledged with success; False on failure or when ``timeout`` passes first."""
        return self._event.wait(timeout) and self.ok

    @classmethod
    def failed(cls, reason: str) -> Delivery:
        d = cls(mid=0)
        d.resolve(False, reason)
        return d

    @classmethod
    def refused(cls, reason: str) -> Delivery:
        """A failed Delivery for a message refused as invalid (``invalid`` set)."""
        d = cls(mid=0, invalid=True)
        d.resolve(False, reason)
        return d


#: At most this many bytes per coalesced socket write.
_WRITE_CHUNK = 65536
_PUBLISH, _DISCONNECT = int(paho.PUBLISH), int(paho.DISCONNECT)


class _CoalescingClient(paho.Client):
    """paho's client, writing the packets queued behind each other with one ``send`` instead of one each.

    paho 2.x's ``_packet_write`` sends packet after packet: on loopback each TCP ``send`` also runs the
    receiving side's stack, about a fifth of the gateway's core under CoAP -> MQTT load (bench/
    coap_publish.py). This override joins the queued packets (up to ``_WRITE_CHUNK`` bytes, never past a
    DISCONNECT) and keeps paho's bookkeeping: partial writes, QoS 0 ``on_publish`` and
    ``MQTTMessageInfo.is_published``, the keepalive clock. A lone packet, or a DISCONNECT first in line,
    takes paho's own path. Written against paho-mqtt 2.2 (pinned in pyproject.toml)."""

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet
        while len(out) > 1 and out[0]["command"] & 0xF0 != _DISCONNECT:
            batch = []
            size = 0
            while out and size < _WRITE_CHUNK and out[0]["command"] & 0xF0 != _DISCONNECT:
                packet = out.popleft()
                batch.append(packet)
                size += packet["to_process"]
            data = b"".join(bytes(p["packet"][p["pos"] :]) for p in batch)
            try:
                written = self._sock_send(data)
            except (AttributeError, ValueError):
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                out.extendleft(reversed(batch))
                self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            sent = []
            for i, packet in enumerate(batch):
                take = min(written, packet["to_process"])
                packet["pos"] += take
                packet["to_process"] -= take
                written -= take
                if packet["to_process"]:
                    out.extendleft(reversed(batch[i:]))
                    break
                sent.append(packet)
            for packet in sent:
                if packet["command"] & 0xF0 == _PUBLISH and packet["qos"] == 0:
                    self._published_qos0(packet)
            with self._msgtime_mutex:
                self._last_msg_out = paho.time_func()
            if len(sent) < len(batch):
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # the socket took part: the loop comes back
        return super()._packet_write()

    def _published_qos0(self, packet: Any) -> None:
        """What paho's ``_packet_write`` does once a QoS 0 PUBLISH is written (callback API version 2)."""
        with self._callback_mutex:
            on_publish = self.on_publish
        if on_publish:
            with self._in_callback_mutex:
                try:
                    on_publish(  # type: ignore[call-arg]  # the version 2 signature (see __init__)
                        self,
                        self._userdata,
                        packet["mid"],
                        ReasonCode(PacketTypes.PUBACK),
                        Properties(PacketTypes.PUBACK),  # type: ignore[no-untyped-call]
                    )
                except Exception as err:
                    self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_publish: %s", err)
                    if not self.suppress_exceptions:
                        raise
        packet["info"]._set_as_published()


#: paho's message states after the PUBLISH was (queued to be) written and before the broker accepted it.
_SENT_STATES = frozenset({paho.mqtt_ms_wait_for_puback, paho.mqtt_ms_wait_for_pubrec})
#: At most this many filters per SUBSCRIBE when re-subscribing after a (re)connect.
_RESUBSCRIBE_BATCH = 64


def _check_paho_internals(client: paho.Client) -> None:
    """The poison-message handling reads and edits paho's private outgoing queue: fail loudly at start-up
    rather than silently should a paho release change it (pyproject.toml pins paho-mqtt 2.2.x; the CLI
    checks the installed release against that range before anything starts)."""
    missing = [
        name
        for name in ("_out_messages", "_out_message_mutex", "_inflight_messages")
        if not hasattr(client, name)
    ]
    if missing:
        raise RuntimeError(f"paho-mqtt has no {', '.join(missing)}: ferryman needs paho-mqtt 2.2.x")


def _failure(codes: list[ReasonCode]) -> str:
    bad = [str(c) for c in codes if c.is_failure]
    return ", ".join(bad)


class MqttBridgeClient(pykka.ThreadingActor):
    """The bridge's persistent MQTT 5 session. See the module docstring for the API and its guarantees."""

    def __init__(
        self,
        url: str,
        client_id: str,
        sink: Sink,
        *,
        username: str | None = None,
        password: str | None = None,
        session_expiry: int = 3600,
        keepalive: int = 60,
        reconnect_min: float = 1.0,
        reconnect_max: float = 60.0,
        max_queued: int = 1000,
        ack_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        poison_after: int = 2,
        poison_window: float = 10.0,
        flap_count: int = 3,
        flap_window: float = 60.0,
        stable_after: float = 10.0,
    ) -> None:
        super().__init__()
        self.host, self.port = parse_url(url)
        self.client_id = client_id
        self.sink = sink
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.ack_timeout = ack_timeout
        self.publish_timeout = publish_timeout
        self._filters: dict[str, int] = {}
        # who asked for each filter (the ``owner`` of subscribe / unsubscribe: the bridges)
        self._owners: SubscriptionHub[str] = SubscriptionHub()
        self._connected = False
        self._connects = 0
        self._lock = threading.Lock()  # guards _pending and _early only; never held while calling paho
        self._pending: dict[int, Delivery] = {}
        self._early: dict[int, tuple[bool, str]] = {}
        self._resubscribe_mids: set[int] = set()
        self.poison_after = poison_after
        self.poison_window = poison_window
        self.flap_count = flap_count
        self.flap_window = flap_window
        self.stable_after = stable_after
        self._strike: tuple[Any, int] = (None, 0)  # (the oldest in-flight message at the last loss, strikes)
        self._dropped = 0  # poison messages dropped
        self._last_error = ""
        self._losses: deque[float] = deque(maxlen=max(1, flap_count))  # monotonic times of link losses
        self._connected_at = 0.0

        c = _CoalescingClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        if username is not None:
            c.username_pw_set(username, password)
        # paho's backoff: min, doubled per failed attempt up to max, reset by a successful CONNACK. Its
        # signature says int, its arithmetic (time + delay, sleep) takes float: sub-second delays work.
        c.reconnect_delay_set(min_delay=reconnect_min, max_delay=reconnect_max)  # type: ignore[arg-type]
        c.max_queued_messages_set(max_queued)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        _check_paho_internals(c)
        self._client = c

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry
        logger.info(
            "MQTT client {} connecting to {}:{} (session expiry {}s)",
            self.client_id,
            self.host,
            self.port,
            self.session_expiry,
        )
        self._client.connect_async(
            self.host, self.port, keepalive=self.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()  # a greenlet once monkey-patched; it retries with backoff until stopped

    def on_stop(self) -> None:
        logger.info("MQTT client {} stopping", self.client_id)
        self._client.disconnect()  # normal DISCONNECT: the broker keeps the session for session_expiry
        self._client.loop_stop()
        self._connected = False
        with self._lock:
            pending, self._pending = self._pending, {}
        for d in pending.values():
            d.resolve(False, "client stopped")

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        logger.opt(exception=(exception_type, exception_value, traceback)).error(
            "MQTT client {} crashed", self.client_id
        )
        self._client.disconnect()
        self._client.loop_stop()

    # -- API ---------------------------------------------------------------------------------------

    def is_connected(self) -> bool:
        return self._connected

    def status(self) -> str:
        """``ok``, ``disconnected`` or ``flapping`` (see the module docstring)."""
        now = time.monotonic()
        recent = sum(1 for t in self._losses if now - t <= self.flap_window)
        stable = self._connected and now - self._connected_at >= self.stable_after
        if recent >= self.flap_count and not stable:
            return "flapping"
        return "ok" if self._connected else "disconnected"

    def health(self) -> dict[str, Any]:
        """For the gateway's /health: the session's status, connected to the broker, connects so far,
        filters held, link losses within ``flap_window``, poison messages dropped and the last error."""
        now = time.monotonic()
        return {
            "status": self.status(),
            "connected": self._connected,
            "connects": self._connects,
            "filters": len(self._filters),
            "link_losses": sum(1 for t in self._losses if now - t <= self.flap_window),
            "dropped": self._dropped,
            "last_error": self._last_error,
        }

    def connect_count(self) -> int:
        return self._connects

    def filters(self) -> dict[str, int]:
        return dict(self._filters)

    def subscribe(self, topic_filter: str, qos: int = 1, owner: str = "") -> bool:
        """Subscribe (or remember until connected) on behalf of ``owner``. Several owners (the XMPP and
        the CoAP bridge) may want one filter: a second owner adds itself without a second SUBSCRIBE (the
        broker would send the filter's retained messages again), and ``unsubscribe`` sends UNSUBSCRIBE
        only when the last owner lets go. A filter the broker would refuse is refused here (False)."""
        err = validate_topic_filter(topic_filter)
        if err:
            logger.warning("MQTT client {}: refused to subscribe {!r}: {}", self.client_id, topic_filter, err)
            return False
        shared = bool(self._owners.holders_of(topic_filter) - {owner})
        self._owners.add(owner, topic_filter)
        if shared and topic_filter in self._filters:
            return self._connected
        self._filters[topic_filter] = qos
        if not self._connected:
            logger.debug("MQTT client {}: {} remembered until connected", self.client_id, topic_filter)
            return False
        rc, mid = self._client.subscribe(topic_filter, options=SubscribeOptions(qos=qos))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return False
        d = self._track(mid)
        if not d.wait(self.ack_timeout):
            if d.done and d.reason:
                logger.warning("MQTT client {}: {} refused: {}", self.client_id, topic_filter, d.reason)
                if self._filters.get(topic_filter) == qos:
                    del self._filters[topic_filter]
            return False
        return True

    def unsubscribe(self, topic_filter: str, owner: str = "") -> bool:
        if validate_topic_filter(topic_filter):
            return False  # never subscribed (``subscribe`` refuses it); an UNSUBSCRIBE would cut the link
        self._owners.remove(owner, topic_filter)
        owners = self._owners.holders_of(topic_filter)
        if owners:
            logger.debug("MQTT client {}: {} still wanted by {}", self.client_id, topic_filter, set(owners))
            return True
        self._filters.pop(topic_filter, None)
        if not self._connected:
            return False
        rc, mid = self._client.unsubscribe(topic_filter)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return False
        return self._track(mid).wait(self.ack_timeout)

    def publish_async(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Delivery:
        err = validate_topic_name(topic)
        if err:
            # The one entry point of every topic the bridge publishes (HTTP, CoAP, XMPP): a topic the
            # broker refuses by closing the link would cut off every user and be re-sent for ever.
            logger.info("MQTT client {}: refused a publish to {!r}: {}", self.client_id, topic, err)
            return Delivery.refused(f"invalid topic {topic!r}: {err}")
        if qos not in (0, 1, 2):
            return Delivery.refused(f"invalid QoS {qos}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            logger.warning(
                "MQTT client {}: outgoing queue full, dropped a publish to {}", self.client_id, topic
            )
            return Delivery.failed("queue full")
        if qos == 0:
            d = Delivery(mid=info.mid)
            ok = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            d.resolve(ok, "" if ok else paho.error_string(info.rc))
            return d
        # QoS 1/2: MQTT_ERR_NO_CONN means queued in paho until the session is back; the PUBACK resolves it.
        return self._track(info.mid)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        return self.publish_async(topic, payload, qos, retain).wait(self.publish_timeout)

    def publish_many(self, items: list[tuple[str, bytes, int, bool]]) -> list[Delivery]:
        """``publish_async`` for each (topic, payload, qos, retain), in order: one actor message and one
        wake-up of paho's network loop for the lot (paho writes one byte to its wake-up socket pair per
        ``publish()``; here only the last one does), so the loop writes the batch in one go."""
        client = self._client
        wake = client._sockpairW
        out: list[Delivery] = []
        client._sockpairW = None  # restored below; nothing else runs meanwhile (no call here yields)
        try:
            for topic, payload, qos, retain in items:
                try:
                    out.append(self.publish_async(topic, payload, qos, retain))
                except Exception as exc:  # e.g. a topic paho refuses: that message fails, not the batch
                    out.append(Delivery.failed(f"publish failed: {exc}"))
        finally:
            client._sockpairW = wake
        if wake is not None and items:
            with contextlib.suppress(BlockingIOError):
                wake.send(b"0")
        return out

    # -- acknowledgements --------------------------------------------------------------------------

    def _track(self, mid: int) -> Delivery:
        d = Delivery(mid=mid)
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._pending[mid] = d
        if early is not None:
            d.resolve(*early)
        return d

    def _ack(self, mid: int, ok: bool, reason: str) -> None:
        with self._lock:
            d = self._pending.pop(mid, None)
            if d is None:
                if len(self._early) >= _EARLY_LIMIT:
                    self._early.pop(next(iter(self._early)))
                self._early[mid] = (ok, reason)
        if d is not None:
            d.resolve(ok, reason)

    # -- paho callbacks (network-loop greenlet) ----------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        if reason_code.is_failure:
            logger.warning("MQTT client {}: connection refused: {}", self.client_id, reason_code)
            return
        self._connected = True
        self._connected_at = time.monotonic()
        self._connects += 1
        logger.info(
            "MQTT client {} connected to {}:{} (session present: {})",
            self.client_id,
            self.host,
            self.port,
            flags.session_present,
        )
        filters = list(self._filters.items())
        if filters:
            # Always: a broker restarted without persistence has lost the session the flag may still claim.
            # In SUBSCRIBEs of at most _RESUBSCRIBE_BATCH filters: bounded packets, whatever the count.
            for i in range(0, len(filters), _RESUBSCRIBE_BATCH):
                batch = [(f, SubscribeOptions(qos=q)) for f, q in filters[i : i + _RESUBSCRIBE_BATCH]]
                rc, mid = client.subscribe(batch)
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                    self._resubscribe_mids.add(mid)
            logger.info("MQTT client {} re-subscribing {} filter(s)", self.client_id, len(filters))

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        logger.warning(
            "MQTT client {}: cannot reach {}:{}, retrying with backoff", self.client_id, self.host, self.port
        )

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        was = self._connected
        self._connected = False
        if was:
            logger.warning("MQTT client {} disconnected: {}", self.client_id, reason_code)
            self._losses.append(time.monotonic())
            self._last_error = f"disconnected: {reason_code}"
            self._strike_poison(client)

    def _strike_poison(self, client: paho.Client) -> None:
        """The link was lost: a strike for the oldest message sent and not accepted shortly before; dropped
        from paho's queue (never re-sent again) at ``poison_after`` strikes in a row."""
        now = paho.time_func()
        with client._out_message_mutex:
            first = next(
                (m for m in client._out_messages.values() if m.qos > 0 and m.state in _SENT_STATES), None
            )
            if first is None or now - first.timestamp > self.poison_window:
                self._strike = (None, 0)
                return
            last, strikes = self._strike
            strikes = strikes + 1 if last is first else 1
            if strikes < self.poison_after:
                self._strike = (first, strikes)
                return
            self._strike = (None, 0)
            client._out_messages.pop(first.mid, None)
            client._inflight_messages = max(0, client._inflight_messages - 1)
        self._dropped += 1
        reason = (
            f"dropped a publish to {first.topic!r} ({len(first.payload)} bytes): the broker closed the "
            f"connection right after it {strikes} times"
        )
        self._last_error = reason
        logger.error("MQTT client {}: {}", self.client_id, reason)
        self._ack(first.mid, False, reason)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        headers = {"qos": str(msg.qos), "retain": "1" if msg.retain else "0"}
        props = msg.properties
        if props is not None:
            for name, header in (("ContentType", "content_type"), ("ResponseTopic", "response_topic")):
                value = getattr(props, name, None)
                if value:
                    headers[header] = str(value)
            for key, value in getattr(props, "UserProperty", None) or []:
                headers.setdefault(str(key), str(value))
        message = Message(
            kind="mqtt.message", topic=msg.topic, payload=bytes(msg.payload), source="mqtt", headers=headers
        )
        try:
            self.sink(message)
        except Exception as exc:
            logger.opt(exception=exc).error(
                "MQTT client {}: the sink failed on {}", self.client_id, msg.topic
            )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        self._ack(mid, not reason_code.is_failure, str(reason_code) if reason_code.is_failure else "")

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Any
    ) -> None:
        reason = _failure(reason_codes)
        if mid in self._resubscribe_mids:
            self._resubscribe_mids.discard(mid)
            if reason:
                logger.warning("MQTT client {}: re-subscription refused: {}", self.client_id, reason)
            return
        self._ack(mid, not reason, reason)

    def _on_unsubscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Any
    ) -> None:
        reason = _failure(reason_codes)
        self._ack(mid, not reason, reason)
