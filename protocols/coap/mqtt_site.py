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

This is aiocoap's transport over the request core of publish mode (``publish_core.PublishCore``: what a
publish means, the grant's interceptors, the batched hand-over to the bridge); the datagram transport
(``fast_publish.py``) is the other one and takes the plain POST / PUT requests (no Block1, no unusual
options, up to 1 KiB) before aiocoap sees them, with the same answers. aiocoap stays for what only it
serves here: Observe, Block1 assembly and DTLS. Credentials and authorization: ``auth.py``. Requests run
on the asyncio loop; the MQTT session is reached in the hub (``AsyncioHost.in_hub``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiocoap
import aiocoap.error
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import CON
from aiocoap.pipe import Pipe
from aiocoap.resource import PathCapable, Resource

from ferryman.actors.contracts import Refusal

from .auth import Principal, authenticate, check, notify_unsubscribe, refusal_message, remote_of, topic_of
from .blockwise import Block1Assembler, message_key
from .context import CoapContext
from .fast_publish import FastPublish
from .observers import again_as_con, notify
from .publish import MqttPort
from .publish_core import PublishCore, topic_problem

__all__ = ["PublishSite"]

#: Notifications waiting for a slow observer; past it the oldest is dropped (MQTT QoS 0 semantics).
_BACKLOG = 64
_CONNECTED_TTL = 0.5


class PublishSite(Resource, PathCapable):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self, ctx: CoapContext, port: MqttPort) -> None:
        super().__init__()
        self.ctx = ctx
        self.port = port  # the bridge's MQTT session (bridge/coap_mqtt.py), handed over by the listener
        self.core = PublishCore(ctx, port)
        self.uploads = Block1Assembler()  # Block1 uploads being assembled (blockwise.py)
        self.observations = 0
        #: Observations waiting for the listener to stop (each one's stream adds and removes its own future).
        self.stop_waiters: set[asyncio.Future[None]] = set()
        self.fast: FastPublish | None = None
        if not ctx.secure:  # a DTLS listener's datagrams are not plain CoAP
            # Plain POST / PUT requests skip aiocoap (fast_publish.py); everything else still reaches it.
            self.fast = FastPublish(self.core)
            ctx.fast_path = self.fast

    def stop(self) -> None:
        """The listener stops: observations end with 5.03."""
        for waiter in list(self.stop_waiters):
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
        else:
            # Authenticated first, as every request: a stranger learns nothing but 4.01 (and its answer is
            # never larger than its request, see listener._cap_answers).
            who = await authenticate(self.ctx, request)
            if not isinstance(who, Principal):
                pipe.add_response(who, is_last=True)
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
        problem = topic_problem(topic, wildcards=False)
        if problem:
            return refusal_message(Code.BAD_REQUEST, problem)
        block1 = request.opt.block1
        if block1 is not None and block1.start + block1.size > ctx.settings.max_packet_size:
            return refusal_message(
                Code.REQUEST_ENTITY_TOO_LARGE, f"over {ctx.settings.max_packet_size} bytes"
            )
        if block1 is None:
            payload = bytes(request.payload)
        else:
            whole = self.uploads.feed(message_key(remote_of(request), request), request)
            if isinstance(whole, aiocoap.Message):
                return whole  # 2.31 Continue, 4.08 Incomplete, 4.00
            payload = whole
        if len(payload) > ctx.settings.max_packet_size:
            return refusal_message(
                Code.REQUEST_ENTITY_TOO_LARGE, f"over {ctx.settings.max_packet_size} bytes"
            )
        code, text = await self.core.publish_async(who, topic, payload, request.opt.uri_query)
        response = aiocoap.Message(code=Code(code), payload=text)
        if code != Code.CHANGED:
            return response
        if block1 is not None:
            response.opt.block1 = block1
        return response

    # -- observe ---------------------------------------------------------------------------------------
    async def _observe(self, pipe: Pipe, request: aiocoap.Message) -> None:
        ctx = self.ctx
        who = await authenticate(ctx, request)
        if not isinstance(who, Principal):
            pipe.add_response(who, is_last=True)
            return
        topic_filter = topic_of(request)
        problem = topic_problem(topic_filter, wildcards=True)
        if problem:
            pipe.add_response(refusal_message(Code.BAD_REQUEST, problem), is_last=True)
            return
        refused = check(ctx, who, "subscribe", topic_filter)
        if refused is not None:
            pipe.add_response(refused, is_last=True)
            return
        try:
            subscribed = self.core.subscription(who, topic_filter)
        except Exception as exc:
            ctx.log("ERROR", "listener {!r}: an interceptor failed on {}: {!r}", ctx.name, topic_filter, exc)
            pipe.add_response(refusal_message(Code.INTERNAL_SERVER_ERROR, "interceptor failed"), is_last=True)
            return
        if subscribed is None:  # an interceptor dropped the subscription
            pipe.add_response(refusal_message(Code.FORBIDDEN, f"not allowed: {topic_filter}"), is_last=True)
            return
        observation = Observation(self, pipe, who, topic_filter, self.port, subscribed)
        await ctx.observers.hold(remote_of(request), pipe, observation.run)


class Observation:
    """One CoAP observation = one receiver of an MQTT filter (asyncio thread)."""

    def __init__(
        self,
        site: PublishSite,
        pipe: Pipe,
        who: Principal,
        topic_filter: str,
        port: MqttPort,
        subscribed: str | None = None,
    ):
        self.site = site
        self.ctx = site.ctx
        self.pipe = pipe
        self.who = who
        self.topic_filter = topic_filter  # as the device asked for it
        self.subscribed = subscribed if subscribed is not None else topic_filter  # after the interceptors
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

    def _subscribe(self, holder: dict[str, Any]) -> tuple[int, bool]:
        """In the hub: subscribes, and unsubscribes again when the observation ended meanwhile (its task
        cancelled while it waited: the awaited result is then dropped, see ``AsyncioHost.in_hub``)."""
        key, ok = self.port.subscribe(self.subscribed, self.deliver, self.ctx.timeout)
        holder["key"] = key
        if holder.get("gone") and key:
            self.port.unsubscribe(key)  # removing a receiver twice is harmless
        return key, ok

    async def run(self) -> None:
        ctx = self.ctx
        stop: asyncio.Future[None] = self.loop.create_future()
        stop.add_done_callback(lambda _: self._put(None))
        self.site.stop_waiters.add(stop)
        self.who.hold(self.revoked)
        # The key of the bridge's receiver: written by the hub greenlet, read here (and the other way round
        # for "gone"), so that whichever side comes last removes it (both may: that is harmless).
        holder: dict[str, Any] = {}
        self.site.observations += 1
        interval = ctx.observers.check_interval
        con = self.pipe.request.mtype == CON
        try:
            _, ok = await ctx.host.in_hub(self._subscribe, holder)
            if not ok:
                msg = "the bridge's MQTT session could not subscribe"
                notify(self.pipe, refusal_message(Code.SERVICE_UNAVAILABLE, msg), is_last=True)
                return
            first = aiocoap.Message(code=Code.CONTENT, payload=b"")
            last = aiocoap.Message(code=Code.CONTENT, payload=b"")
            first.opt.observe = number = 0
            notify(self.pipe, first, is_last=False)
            last_con = self.loop.time()  # the peer just spoke: as good as an acknowledgement
            while True:
                try:
                    item = await asyncio.wait_for(
                        self.queue.get(), max(0.0, last_con + interval - self.loop.time())
                    )
                except TimeoutError:
                    # Quiet for the interval: is the peer still there? (RFC 7641 4.5) The last notification
                    # again, as CON; an RST or no ACK ends the observation (aiocoap cancels this task).
                    number = (number + 1) & 0xFFFFFF
                    again = again_as_con(last)
                    again.opt.observe = number
                    last_con = self.loop.time()
                    if not notify(self.pipe, again):
                        return  # gone meanwhile: the task is being cancelled
                    continue
                if item is None:
                    notify(self.pipe, refusal_message(Code.SERVICE_UNAVAILABLE, "server shutting down"), True)
                    return
                if isinstance(item, Refusal):
                    notify(self.pipe, refusal_message(Code.UNAUTHORIZED, "revoked"), is_last=True)
                    return
                topic, payload = item
                grant = self.who.grant
                if grant is None:
                    notify(self.pipe, refusal_message(Code.UNAUTHORIZED, "revoked"), is_last=True)
                    return
                notified = self.site.core.notification(self.who, grant, topic, payload)
                if notified is None:
                    continue  # dropped by an interceptor, or not for this grant
                payload = notified
                number = (number + 1) & 0xFFFFFF
                last = aiocoap.Message(code=Code.CONTENT, payload=payload)
                note = aiocoap.Message(code=Code.CONTENT, payload=payload)
                note.opt.observe = number
                now = self.loop.time()
                if con or now - last_con >= interval:
                    # A NON observer gets a CON notification at least every interval (RFC 7641 4.5).
                    note.transport_tuning = aiocoap.Reliable()
                    last_con = now
                if not notify(self.pipe, note):
                    return
        finally:
            # Deregistration, RST, unacknowledged notifications: aiocoap cancels this task.
            self.site.observations -= 1
            self.site.stop_waiters.discard(stop)
            self.who.release(self.revoked)
            holder["gone"] = True
            key = holder.get("key")
            if key:
                ctx.host.to_hub(self.port.unsubscribe, key)
            notify_unsubscribe(ctx, self.who, self.topic_filter)
            ctx.log("DEBUG", "listener {!r}: observation of {} ended", ctx.name, self.topic_filter)
