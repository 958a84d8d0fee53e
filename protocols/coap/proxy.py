"""CoAP proxy mode (``target = "coap://host:port[/prefix]"``): the root resource of a ``coap`` listener that
authenticates and authorizes every request and forwards it to a CoAP server.

Per request (asyncio thread, aiocoap's render task):

1. ``authenticate`` (``auth.py``): the ``auth`` query option or the DTLS identity; 4.01 without.
2. Authorization against the session's grant, by method: POST / PUT / DELETE / PATCH / iPATCH need
   ``auth_publish`` on the topic (the Uri-Path joined by ``/``) with the whole payload, GET / FETCH with
   Observe = 0 ``auth_subscribe`` (``on_subscribe`` is told), a plain GET / FETCH (and a deregistration,
   Observe = 1) needs the same subscribe right to read the topic, told nothing. 4.03 otherwise; the target
   sees nothing of a refused request.
3. Forwarding (``proxy_upstream.py``): options kept but those of the hop, ``auth`` removed, the target's
   answer relayed (code, payload, options). 5.04 when the target does not answer within
   ``connect_timeout``, 5.02 when it cannot be reached.

Refusals and quick answers go back piggybacked in the ACK of a CON request (aiocoap's message layer uses
the request's message id and token); a slow answer gets an empty ACK first and comes as a separate
response of the request's type (CON or NON).

Block-wise: the client's Block1 upload is reassembled here (up to ``max_packet_size`` bytes, 4.13 beyond)
before it is authorized and forwarded whole (aiocoap splits it again towards the target); the target's
response is reassembled by aiocoap and served to the client in Block2 blocks of the client's size. A
topic the grant refuses is refused at the first block (when the grant decides by topic alone). Partial
uploads and served responses are kept ``MAX_TRANSMIT_WAIT`` (93 s) after their last use, then dropped.

Observe: ``proxy_observe.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiocoap
from aiocoap import interfaces
from aiocoap.blockwise import Block1Spool, Block2Cache, ContinueException, IncompleteException
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.pipe import Pipe
from aiocoap.resource import PathCapable

from .auth import Principal, action_of, authenticate, authorize, refusal_message, remote_of, topic_of
from .context import CoapContext
from .observers import feed_block1
from .proxy_fast import FastProxy, fast_path_enabled
from .proxy_observe import Relay
from .proxy_upstream import Upstream, UpstreamError, forwarded_request, relayed_response, unsupported_options

__all__ = ["ProxySite", "build_site"]

_READ = (Code.GET, Code.FETCH)
_FAST_KINDS = ("pending", "dedup", "fast_block2")


def build_site(ctx: CoapContext) -> ProxySite:
    """The aiocoap root resource of a proxy-mode listener (every path), and its fast path for plain
    requests (``proxy_fast.py``), which takes them before aiocoap sees them."""
    site = ProxySite(ctx)
    if fast_path_enabled(ctx):
        site.fast = FastProxy(ctx)
        ctx.fast_path = site.fast
    return site


class ProxySite(interfaces.Resource, PathCapable):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self, ctx: CoapContext) -> None:
        super().__init__()
        self.ctx = ctx
        target = ctx.settings.parsed_target
        self.upstream = Upstream(target.host, target.port, target.path, ctx.timeout, ctx.name)
        self.max_body = int(getattr(ctx.settings, "max_packet_size", 1 << 20))
        self.relays: set[Relay] = set()
        self._block1: Block1Spool | None = None  # made on the loop (their timers need it)
        self._block2: Block2Cache | None = None
        self._closing: asyncio.Future[None] | None = None
        self.fast: FastProxy | None = None
        ctx.host.to_hub(_state_gauges, ctx, self)

    # -- what the listener and the metrics read ----------------------------------------------------------
    @property
    def observations(self) -> int:
        return len(self.relays)

    def state_sizes(self) -> dict[str, int]:
        """Per-peer state this site holds (``ferryman_coap_proxy_state{listener, kind}``); the fast path's
        (``pending``, ``dedup``, ``fast_block2``) are 0 without it."""
        fast = self.fast.sizes() if self.fast is not None else dict.fromkeys(_FAST_KINDS, 0)
        return {
            "observations": len(self.relays),
            "block1": len(getattr(getattr(self._block1, "_assemblies", None), "_items", ())),
            "block2": len(getattr(getattr(self._block2, "_completes", None), "_items", ())),
            **fast,
        }

    def stop(self) -> None:
        """The listener stops (asyncio thread): every observation ends with 5.03, the upstream context
        is shut down."""
        for relay in list(self.relays):
            relay.end(refusal_message(Code.SERVICE_UNAVAILABLE, "server shutting down"))
        if self.fast is not None:
            self.fast.close()
        self._closing = asyncio.ensure_future(self.upstream.close())

    async def shutdown(self) -> None:
        self.stop()
        await self.upstream.close()

    # -- aiocoap's resource interface --------------------------------------------------------------------
    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # done in render_to_pipe, after authentication

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        raise NotImplementedError("render_to_pipe serves every request")

    async def render_to_pipe(self, pipe: Pipe) -> None:
        try:
            await self._serve(pipe)
        except UpstreamError as exc:
            pipe.add_response(exc.to_message(), is_last=True)

    # -- the request -------------------------------------------------------------------------------------
    async def _serve(self, pipe: Pipe) -> None:
        request: aiocoap.Message = pipe.request
        ctx = self.ctx
        principal = await authenticate(ctx, request)
        if isinstance(principal, aiocoap.Message):
            pipe.add_response(principal, is_last=True)
            return
        problem = self._unforwardable(request)
        if problem is not None:
            pipe.add_response(problem, is_last=True)
            return
        topic = topic_of(request)
        action = action_of(request)
        block2 = request.opt.block2
        if block2 is not None and block2.block_number > 0 and request.opt.block1 is None:
            # A later block of a response already served (and authorized): from the cache, whose keys hold
            # the peer's address and every option, the credentials included. A large response forwarded by
            # the fast path is kept there, under the same kind of key.
            fast = self.fast.cached_block(remote_of(request), request) if self.fast is not None else None
            if fast is None:
                fast = await self._cached_block(request)
            pipe.add_response(fast, is_last=True)
            return
        if action == "publish":
            await self._publish(pipe, principal, topic, request)
            return
        if request.code not in _READ:
            pipe.add_response(refusal_message(Code.METHOD_NOT_ALLOWED, "unsupported method"), is_last=True)
            return
        if action == "subscribe":
            refusal = await authorize(ctx, principal, "subscribe", topic)
            if refusal is not None:
                pipe.add_response(refusal, is_last=True)
                return

            async def relay() -> None:
                remote = await self.upstream.remote()
                forwarded = forwarded_request(request, request.payload, self.upstream.prefix, remote, 0)
                await Relay(ctx, self.upstream, pipe, principal, topic, self._fit, self.relays).run(forwarded)

            await ctx.observers.hold(remote_of(request), pipe, relay)
            return
        refusal = self._read_refusal(principal, topic, request)
        if refusal is None and action == "unsubscribe":
            refusal = await authorize(ctx, principal, "unsubscribe", topic)
        if refusal is not None:
            pipe.add_response(refusal, is_last=True)
            return
        pipe.add_response(await self._exchange(request, request.payload), is_last=True)

    async def _publish(self, pipe: Pipe, principal: Principal, topic: str, request: aiocoap.Message) -> None:
        block1 = request.opt.block1
        if block1 is not None:
            grant = principal.grant
            if grant is not None and grant.publish_by_topic and not grant.auth_publish(topic, b""):
                # Decided by topic alone: refuse at the first block, not after the whole upload.
                self.ctx.count_refusal("publish")
                pipe.add_response(refusal_message(Code.FORBIDDEN, f"not allowed: {topic}"), is_last=True)
                return
            if block1.start + len(request.payload) > self.max_body:
                too_large = refusal_message(Code.REQUEST_ENTITY_TOO_LARGE, f"over {self.max_body} bytes")
                too_large.opt.size1 = self.max_body
                pipe.add_response(too_large, is_last=True)
                return
            try:
                request = feed_block1(self._spool(), request)
            except (ContinueException, IncompleteException) as exc:
                pipe.add_response(exc.to_message(), is_last=True)
                return
        refusal = await authorize(self.ctx, principal, "publish", topic, request.payload)
        if refusal is not None:
            pipe.add_response(refusal, is_last=True)
            return
        response = await self._exchange(request, request.payload)
        if block1 is not None:
            response.opt.block1 = request.opt.block1
        pipe.add_response(response, is_last=True)

    def _read_refusal(
        self, principal: Principal, topic: str, request: aiocoap.Message
    ) -> aiocoap.Message | None:
        """Reading a topic (GET / FETCH without a registration) needs the right to subscribe to it."""
        grant = principal.grant
        if grant is None:
            return refusal_message(Code.UNAUTHORIZED, "revoked")
        if grant.auth_subscribe(topic):
            return None
        self.ctx.count_refusal("subscribe")
        return refusal_message(Code.FORBIDDEN, f"not allowed: {topic}")

    def _unforwardable(self, request: aiocoap.Message) -> aiocoap.Message | None:
        opt = request.opt
        if opt.get_option(OptionNumber.PROXY_URI) or opt.get_option(OptionNumber.PROXY_SCHEME):
            return refusal_message(Code.PROXYING_NOT_SUPPORTED, "a reverse proxy: use Uri-Path")
        unknown = unsupported_options(request)
        if unknown:
            return refusal_message(Code.BAD_OPTION, f"unsupported critical options {unknown}")
        return None

    # -- forwarding and Block2 ---------------------------------------------------------------------------
    async def _exchange(self, request: aiocoap.Message, payload: bytes) -> aiocoap.Message:
        """Forwards ``request`` and returns the target's answer, cut to the client's block size."""

        async def forward() -> aiocoap.Message:
            remote = await self.upstream.remote()
            handle = self.upstream.request(
                forwarded_request(request, payload, self.upstream.prefix, remote, None)
            )
            try:
                return relayed_response(await self.upstream.response(handle))
            except UpstreamError as exc:
                return exc.to_message()

        return await self._blocks().extract_or_insert(request, forward)

    async def _fit(self, request: aiocoap.Message, response: aiocoap.Message) -> aiocoap.Message:
        """``response`` as the client gets it: whole, or its first block (the rest from the cache)."""
        if len(response.payload) <= request.remote.maximum_payload_size and request.opt.block2 is None:
            return response

        async def ready() -> aiocoap.Message:
            return response

        fitted: aiocoap.Message = await self._blocks().extract_or_insert(_first_block_of(request), ready)
        return fitted

    async def _cached_block(self, request: aiocoap.Message) -> aiocoap.Message:
        async def missing() -> aiocoap.Message:  # never called for a block number > 0
            raise IncompleteException

        try:
            block: aiocoap.Message = await self._blocks().extract_or_insert(request, missing)
        except IncompleteException as exc:
            return exc.to_message()
        return block

    def _spool(self) -> Block1Spool:
        if self._block1 is None:
            self._block1 = Block1Spool()
        return self._block1

    def _blocks(self) -> Block2Cache:
        if self._block2 is None:
            self._block2 = Block2Cache()
        return self._block2


def _first_block_of(request: aiocoap.Message) -> aiocoap.Message:
    """The registration without a Block2 option past 0, so the cache builds the response (Block2 keys
    ignore Observe and Block options: later GETs of the other blocks find it)."""
    block2 = request.opt.block2
    if block2 is None or block2.block_number == 0:
        return request
    return request.copy(block2=None)


def _state_gauges(ctx: CoapContext, site: ProxySite) -> None:
    """``ferryman_coap_proxy_state{listener, kind}``: read at scrape time (in the hub; only ``len``s of
    the asyncio thread's containers). Made in the hub: prometheus-client's locks are gevent's."""
    gauge: Any = getattr(ctx.metrics, "coap_proxy_state", None)
    if gauge is None:
        from prometheus_client import Gauge

        gauge = Gauge(
            "ferryman_coap_proxy_state",
            "Per-peer state of CoAP proxy listeners (observations, partial Block1 uploads, Block2 responses)",
            ["listener", "kind"],
            registry=ctx.metrics.registry,
        )
        ctx.metrics.coap_proxy_state = gauge  # type: ignore[attr-defined]
    for kind in ("observations", "block1", "block2", *_FAST_KINDS):
        gauge.labels(ctx.name, kind).set_function(_reader(site, kind))


def _reader(site: ProxySite, kind: str) -> Callable[[], float]:
    return lambda: float(site.state_sizes()[kind])
