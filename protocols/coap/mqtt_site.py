"""The root resource of CoAP -> MQTT mode (``target = "mqtt"``): every path is an MQTT topic.

- POST / PUT ``coap://gw/<topic>``: publishes the payload (QoS ``publish_qos``, or ``?qos=0|1|2``;
  ``?retain=1`` retains) through the bridge's MQTT session, answered 2.04 Changed once the session took it
  (QoS 1/2: the broker acknowledged it). Block-wise (Block1) payloads are assembled first, up to
  ``max_packet_size`` bytes (4.13 beyond).
- GET with Observe ``coap://gw/<topic or filter>`` (``+`` and ``#`` work as in MQTT): an MQTT subscription
  of the bridge's session; the registration is answered 2.05 with an empty payload and each MQTT message
  on it arrives as a notification (payload as published). The observation ends, and the last observer of a
  filter unsubscribes the MQTT session, when the client deregisters, resets or stops acknowledging
  notifications (aiocoap cancels the render task), when a handler revokes the credentials, or when the
  listener stops (5.03 as the last notification).
- Plain GET (no Observe), DELETE and others: 4.05 Method Not Allowed (publish mode keeps no state to read).

Plain POST / PUT requests (no Block1, no unusual options, up to 1 KiB) take a fast path that skips aiocoap
and gives the same answers: ``fast_publish.py``. Credentials and authorization: ``auth.py``. Requests run
on the asyncio loop; the MQTT session is reached in the hub (``AsyncioHost.in_hub``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import aiocoap
import aiocoap.error
from aiocoap.numbers.codes import Code
from aiocoap.pipe import Pipe
from aiocoap.resource import PathCapable, Resource

from ferryman.actors.contracts import Refusal
from ferryman.actors.topics import topic_name_error

from .auth import Principal, authenticate, check, notify_unsubscribe, refusal_message, topic_of
from .context import CoapContext
from .fast_publish import FastPublish
from .publish import MqttPort
from .pump import PublishPump

__all__ = ["PublishSite"]

#: Notifications waiting for a slow observer; past it the oldest is dropped (MQTT QoS 0 semantics).
_BACKLOG = 64
_CONNECTED_TTL = 0.5


class PublishSite(Resource, PathCapable):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self, ctx: CoapContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.port: MqttPort | None = None
        self.attached: asyncio.Event | None = None  # created on the loop by attach()
        self.observations = 0
        self.pump = PublishPump(ctx.host, ctx.timeout)
        self._stop_waiters: set[asyncio.Future[None]] = set()
        self.fast: FastPublish | None = None
        if not ctx.secure:  # a DTLS listener's datagrams are not plain CoAP
            # Plain POST / PUT requests skip aiocoap (fast_publish.py); everything else still reaches it.
            self.fast = FastPublish(self)
            ctx.fast_path = self.fast

    # -- wiring (asyncio thread) -----------------------------------------------------------------------
    def attach(self, port: MqttPort) -> None:
        self.port = port
        if self.attached is None:
            self.attached = asyncio.Event()
        self.attached.set()

    def stop(self) -> None:
        """The listener stops: observations end with 5.03."""
        for waiter in list(self._stop_waiters):
            if not waiter.done():
                waiter.set_result(None)

    # -- aiocoap's resource interface -----------------------------------------------------------------
    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return True

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        raise aiocoap.error.UnallowedMethod()

    async def render_to_pipe(self, pipe: Pipe) -> None:
        request: aiocoap.Message = pipe.request
        code = request.code
        if code in (Code.POST, Code.PUT):
            pipe.add_response(await self._post(request), is_last=True)
        elif code == Code.GET and request.opt.observe == 0:
            await self._observe(pipe, request)
        elif code == Code.GET:
            msg = "publish mode: GET needs Observe (an MQTT subscription); POST or PUT publishes"
            pipe.add_response(refusal_message(Code.METHOD_NOT_ALLOWED, msg), is_last=True)
        else:
            msg = "publish mode takes POST / PUT (publish) and GET with Observe (subscribe)"
            pipe.add_response(refusal_message(Code.METHOD_NOT_ALLOWED, msg), is_last=True)

    # -- publish ---------------------------------------------------------------------------------------
    async def _post(self, request: aiocoap.Message) -> aiocoap.Message:
        ctx = self.ctx
        who = await authenticate(ctx, request)  # before assembling blocks: strangers store nothing
        if not isinstance(who, Principal):
            return who
        topic = topic_of(request)
        problem = _topic_problem(topic, wildcards=False)
        if problem:
            return refusal_message(Code.BAD_REQUEST, problem)
        block1 = request.opt.block1
        if block1 is not None and block1.start + block1.size > ctx.settings.max_packet_size:
            return refusal_message(
                Code.REQUEST_ENTITY_TOO_LARGE, f"over {ctx.settings.max_packet_size} bytes"
            )
        try:
            whole = self._block1.feed_and_take(request)
        except aiocoap.error.RenderableError as exc:
            reply: aiocoap.Message = exc.to_message()  # 2.31 Continue, 4.08 Incomplete
            return reply
        payload = bytes(whole.payload)
        if len(payload) > ctx.settings.max_packet_size:
            return refusal_message(
                Code.REQUEST_ENTITY_TOO_LARGE, f"over {ctx.settings.max_packet_size} bytes"
            )
        options = _query_options(request.opt.uri_query, ctx.settings.publish_qos)
        if isinstance(options, aiocoap.Message):
            return options
        qos, retain = options
        refused = check(ctx, who, "publish", topic, payload)
        if refused is not None:
            return refused
        port = await self._port()
        if port is None:
            return refusal_message(Code.SERVICE_UNAVAILABLE, "the bridge's MQTT session is not attached")
        failure = await self.pump.publish(port, topic, payload, qos, retain)
        if failure is not None:
            ctx.log("INFO", "listener {!r}: publish to {} failed: {}", ctx.name, topic, failure)
            return refusal_message(Code.SERVICE_UNAVAILABLE, f"publish failed: {failure}")
        response = aiocoap.Message(code=Code.CHANGED)
        if block1 is not None:
            response.opt.block1 = block1
        return response

    async def _port(self) -> MqttPort | None:
        if self.port is not None:
            return self.port
        if self.attached is None:
            self.attached = asyncio.Event()
        try:
            await asyncio.wait_for(self.attached.wait(), self.ctx.timeout)
        except TimeoutError:
            return None
        return self.port

    # -- observe ---------------------------------------------------------------------------------------
    async def _observe(self, pipe: Pipe, request: aiocoap.Message) -> None:
        ctx = self.ctx
        who = await authenticate(ctx, request)
        if not isinstance(who, Principal):
            pipe.add_response(who, is_last=True)
            return
        topic_filter = topic_of(request)
        problem = _topic_problem(topic_filter, wildcards=True)
        if problem:
            pipe.add_response(refusal_message(Code.BAD_REQUEST, problem), is_last=True)
            return
        refused = check(ctx, who, "subscribe", topic_filter)
        if refused is not None:
            pipe.add_response(refused, is_last=True)
            return
        port = await self._port()
        if port is None:
            msg = "the bridge's MQTT session is not attached"
            pipe.add_response(refusal_message(Code.SERVICE_UNAVAILABLE, msg), is_last=True)
            return
        await Observation(self, pipe, who, topic_filter, port).run()


class Observation:
    """One CoAP observation = one receiver of an MQTT filter (asyncio thread)."""

    def __init__(self, site: PublishSite, pipe: Pipe, who: Principal, topic_filter: str, port: MqttPort):
        self.site = site
        self.ctx = site.ctx
        self.pipe = pipe
        self.who = who
        self.topic_filter = topic_filter
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, bytes] | Refusal | None] = asyncio.Queue()
        self.dropped = 0

    def deliver(self, topic: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """Called in the hub (the bridge actor's greenlet): hands the message to the loop."""
        self.ctx.host.call_soon(self._put, (topic, payload))

    def _put(self, item: tuple[str, bytes] | Refusal | None) -> None:
        if self.queue.qsize() >= _BACKLOG and isinstance(item, tuple):
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)

    def revoked(self, refusal: Refusal) -> None:
        self._put(refusal)

    async def run(self) -> None:
        ctx = self.ctx
        stop: asyncio.Future[None] = self.loop.create_future()
        stop.add_done_callback(lambda _: self._put(None))
        self.site._stop_waiters.add(stop)
        self.who.hold(self.revoked)
        key = 0
        self.site.observations += 1
        try:
            key, ok = await ctx.host.in_hub(self.port.subscribe, self.topic_filter, self.deliver, ctx.timeout)
            if not ok:
                msg = "the bridge's MQTT session could not subscribe"
                self.pipe.add_response(refusal_message(Code.SERVICE_UNAVAILABLE, msg), is_last=True)
                return
            first = aiocoap.Message(code=Code.CONTENT, payload=b"")
            first.opt.observe = number = 0
            self.pipe.add_response(first, is_last=False)
            while True:
                item = await self.queue.get()
                if item is None:
                    self.pipe.add_response(
                        refusal_message(Code.SERVICE_UNAVAILABLE, "server shutting down"), is_last=True
                    )
                    return
                if isinstance(item, Refusal):
                    self.pipe.add_response(refusal_message(Code.UNAUTHORIZED, "revoked"), is_last=True)
                    return
                topic, payload = item
                grant = self.who.grant
                if grant is None:
                    self.pipe.add_response(refusal_message(Code.UNAUTHORIZED, "revoked"), is_last=True)
                    return
                if not grant.auth_deliver(topic):
                    continue
                number = (number + 1) & 0xFFFFFF
                note = aiocoap.Message(code=Code.CONTENT, payload=payload)
                note.opt.observe = number
                self.pipe.add_response(note, is_last=False)
        finally:
            # Deregistration, RST, unacknowledged notifications: aiocoap cancels this task.
            self.site.observations -= 1
            self.site._stop_waiters.discard(stop)
            self.who.release(self.revoked)
            if key:
                ctx.host.to_hub(self.port.unsubscribe, key)
            notify_unsubscribe(ctx, self.who, self.topic_filter)
            ctx.log("DEBUG", "listener {!r}: observation of {} ended", ctx.name, self.topic_filter)


def _topic_problem(topic: str, wildcards: bool) -> str | None:
    if not topic:
        return "no topic: the path is the topic"
    if wildcards:
        return None if _valid_filter(topic) else f"bad topic filter: {topic}"
    problem = topic_name_error(topic)
    return f"bad topic: {problem}" if problem else None


def _valid_filter(topic_filter: str) -> bool:
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return "\x00" not in topic_filter


def _query_options(queries: Iterable[str], default_qos: int) -> tuple[int, bool] | aiocoap.Message:
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
