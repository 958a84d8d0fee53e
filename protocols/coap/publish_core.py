"""The request core of CoAP -> MQTT mode (``target = "mqtt"``): what a request means, whichever transport
read it.

Two transports sit over it, both in the asyncio thread:

- the datagram transport (``fast_publish.FastPublish``): plain POST / PUT datagrams, read with
  ``codec.parse`` and answered with ``codec.encode``. It carries the publish traffic: measured with
  bench/coap_publish.py, aiocoap's request path costs about half of the gateway's CPU per publish
  (2,445 / 2,724 req/s at 8 / 32 clients before the datagram path, 6,613 with it; see bench/README.md);
- aiocoap's resource interface (``mqtt_site.PublishSite``), kept for what only it serves: Observe (its
  pipes, retransmission of CON notifications, RST / ICMP handling), Block1 assembly, unusual options
  and the DTLS transports (tinydtls for pre-shared keys; the certificate terminator feeds it).

The core decides a publish (topic, ``qos`` / ``retain`` query options, the grant's ``auth_publish``, the
grant's interceptors), queues it on the bridge's MQTT session in batches
(``publish_batches.PublishBatcher``) and answers with a plain (code, payload) pair that each transport
encodes its own way. It also turns an Observe registration's filter and each notification through the
grant's interceptors (``ferryman.actors.intercept.run_interceptors``), so both transports and the
notifications share one interceptor story:

- uplink publish: an MQTT ``Publish`` (topic, payload, qos, retain) goes UP after the grant's checks (the
  checks see what the device sent); what the interceptors return is published; a dropped one is answered
  2.04 Changed, as delivered;
- Observe registration: an MQTT ``Subscribe`` of the filter goes UP after ``auth_subscribe``; the bridge
  subscribes what comes back; a dropped one is refused 4.03 (as MQTT refuses a dropped SUBSCRIBE);
- notification: an MQTT ``Publish`` goes DOWN before the delivery check (``auth_deliver`` sees what the
  device would receive); a dropped one is not sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import aiocoap
from aiocoap.numbers.codes import Code

from ferryman.actors.contracts import Direction, Grant
from ferryman.actors.intercept import run_interceptors
from ferryman.actors.topics import validate_topic_filter, validate_topic_name
from ferryman.protocols.mqtt.packets import Publish, Subscribe, Subscription

from .auth import CoapListenerState, Principal, check, refusal_message
from .publish import MqttPort
from .publish_batches import PublishBatcher

__all__ = ["CHANGED", "Answer", "PublishCore", "query_options", "topic_problem"]

#: A transport-neutral answer: (CoAP code as an int, payload).
Answer = tuple[int, bytes]
CHANGED: Answer = (int(Code.CHANGED), b"")
_INTERCEPTOR_FAILED: Answer = (int(Code.INTERNAL_SERVER_ERROR), b"interceptor failed")


def answer_of(message: aiocoap.Message) -> Answer:
    return int(message.code), bytes(message.payload)


class PublishCore:
    """One per publish-mode listener; every method is called in the asyncio thread."""

    def __init__(self, ctx: CoapListenerState, port: MqttPort) -> None:
        self.ctx = ctx
        self.port = port  # the bridge's MQTT session (bridge/coap_mqtt.py), handed over by the listener
        self.batcher = PublishBatcher(ctx.host, float(ctx.settings.connect_timeout))

    # -- publish ---------------------------------------------------------------------------------------
    def publish(
        self,
        who: Principal,
        topic: str,
        payload: bytes,
        queries: Iterable[str],
        done: Callable[[Answer], None],
    ) -> None:
        """Decides and queues one publish of an authenticated requester; ``done(answer)`` is called once,
        in the asyncio thread (at once for a refusal, after the MQTT session took it otherwise)."""
        ctx = self.ctx
        problem = topic_problem(topic, wildcards=False)
        if problem:
            done(answer_of(refusal_message(Code.BAD_REQUEST, problem)))
            return
        options = query_options(queries, ctx.settings.publish_qos)
        if isinstance(options, aiocoap.Message):
            done(answer_of(options))
            return
        qos, retain = options
        refused = check(ctx, who, "publish", topic, payload)
        if refused is not None:
            done(answer_of(refused))
            return
        grant = who.grant
        if grant is not None and grant.interceptors:
            try:
                packet = run_interceptors(
                    grant,
                    who.session,
                    Publish(topic, payload, qos, retain, packet_id=None if qos == 0 else 1),
                    Direction.UP,
                )
            except Exception as exc:
                ctx.log("ERROR", "listener {!r}: an interceptor failed on {}: {!r}", ctx.name, topic, exc)
                done(_INTERCEPTOR_FAILED)
                return
            if packet is None:
                done(CHANGED)  # consumed by the interceptor: as delivered
                return
            topic, payload, qos, retain = packet.topic, bytes(packet.payload), packet.qos, packet.retain

        def published(failure: str | None) -> None:  # asyncio thread
            if failure is None:
                done(CHANGED)
                return
            ctx.log("INFO", "listener {!r}: publish to {} failed: {}", ctx.name, topic, failure)
            done(answer_of(refusal_message(Code.SERVICE_UNAVAILABLE, f"publish failed: {failure}")))

        self.batcher.submit(self.port, (topic, payload, qos, retain), published)

    async def publish_async(
        self, who: Principal, topic: str, payload: bytes, queries: Iterable[str]
    ) -> Answer:
        """:meth:`publish` for aiocoap's request path."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def done(answer: Answer) -> None:
            if not future.done():
                future.set_result(answer)

        self.publish(who, topic, payload, queries, done)
        return await future

    # -- observe ---------------------------------------------------------------------------------------
    def subscription(self, who: Principal, topic_filter: str) -> str | None:
        """The filter the bridge subscribes for an Observe registration of ``topic_filter`` (already
        authorized): after the grant's interceptors; None when one dropped it. Raises what an interceptor
        raises."""
        grant = who.grant
        if grant is None or not grant.interceptors:
            return topic_filter
        subscribe = Subscribe(1, [Subscription(topic_filter)])
        packet = run_interceptors(grant, who.session, subscribe, Direction.UP)
        if packet is None or not packet.subscriptions:
            return None
        return str(packet.subscriptions[0].topic_filter)

    def notification(self, who: Principal, grant: Grant, topic: str, payload: bytes) -> bytes | None:
        """The payload to notify an observer of, for one MQTT message of its subscription: after the
        grant's interceptors (DOWN) and its delivery check; None when it is not to be sent."""
        if grant.interceptors:
            try:
                packet = run_interceptors(grant, who.session, Publish(topic, payload), Direction.DOWN)
            except Exception as exc:
                self.ctx.log(
                    "ERROR", "listener {!r}: an interceptor failed on {}: {!r}", self.ctx.name, topic, exc
                )
                return None
            if packet is None:
                return None
            topic, payload = packet.topic, bytes(packet.payload)
        if not grant.auth_deliver(topic):
            return None
        return payload


def topic_problem(topic: str, wildcards: bool) -> str | None:
    """Why the path may not be published to (or observed) on the broker: the bridge's one rule
    (``validate_topic_name`` / ``validate_topic_filter``), answered 4.00 here rather than failing later."""
    if not topic:
        return "no topic: the path is the topic"
    if wildcards:
        problem = validate_topic_filter(topic)
        return f"bad topic filter: {problem}" if problem else None
    problem = validate_topic_name(topic)
    return f"bad topic: {problem}" if problem else None


def query_options(queries: Iterable[str], default_qos: int) -> tuple[int, bool] | aiocoap.Message:
    """(qos, retain) from the Uri-Query values, or the 4.00 to answer."""
    qos, retain = default_qos, False
    for query in queries:
        key, _, value = query.partition("=")
        if key == "qos":
            if value not in ("0", "1", "2"):
                return refusal_message(Code.BAD_REQUEST, "qos must be 0, 1 or 2")
            qos = int(value)
        elif key == "retain":
            flag = _FLAGS.get(value.lower())
            if flag is None:
                return refusal_message(Code.BAD_REQUEST, "retain must be 0 or 1")
            retain = flag
    return qos, retain


_FLAGS = {"0": False, "false": False, "no": False, "1": True, "true": True, "yes": True, "": True}
