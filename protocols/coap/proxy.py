"""CoAP proxy mode (``target = "coap://host:port[/prefix]"``): the root resource of a ``coap`` listener that
authenticates and authorizes every request and forwards it to a CoAP server.

Per request (asyncio thread, aiocoap's render task):

1. ``authenticate`` (``auth.py``): the ``auth`` query option or the DTLS identity; 4.01 without.
2. Authorization against the session's grant, by method: POST / PUT / DELETE / PATCH / iPATCH need
   ``auth_publish`` on the topic (the Uri-Path joined by ``/``) with the whole payload, GET / FETCH with
   Observe = 0 ``auth_subscribe`` (``on_subscribe`` is told), a plain GET / FETCH (and a deregistration,
   Observe = 1) needs the same subscribe right to read the topic, told nothing. 4.03 otherwise; the target
   sees nothing of a refused request.
3. Forwarding (``proxy_core.py``, over the listener's one ``upstream.UpstreamClient``): options kept but
   those of the hop, ``auth`` removed, the target's answer relayed (code, payload, options). 5.04 when the
   target does not answer within ``connect_timeout``, 5.02 when it cannot be reached.

This is aiocoap's transport over the proxy's request core (``proxy_core.py``); the datagram transport
(``proxy_fast.py``) takes the plain requests before aiocoap sees them and is what carries the speed (see
``proxy_core.py`` for the measurement). aiocoap stays for Observe, Block1 uploads, unusual options and
DTLS.

Refusals and quick answers go back piggybacked in the ACK of a CON request (aiocoap's message layer uses
the request's message id and token); a slow answer gets an empty ACK first and comes as a separate
response of the request's type (CON or NON).

Block-wise: the client's Block1 upload is reassembled here (up to ``max_packet_size`` bytes, 4.13 beyond)
before it is authorized and forwarded whole (the upstream client splits it again towards the target); the
target's response is reassembled by the upstream client and served to the client in Block2 blocks of the
client's size from the listener's one ``blockwise.Block2Store``. A topic the grant refuses is refused at
the first block (when the grant decides by topic alone). Partial uploads and served responses are kept
``MAX_TRANSMIT_WAIT`` (93 s) after their last use, then dropped.

Observe: ``proxy_observe.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiocoap
from aiocoap import interfaces
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import NON
from aiocoap.pipe import Pipe
from aiocoap.resource import PathCapable

from .auth import Principal, action_of, authenticate, authorize, refusal_message, remote_of, topic_of
from .blockwise import Block1Assembler, Block2Store, as_message, message_key, options_of
from .context import CoapContext
from .proxy_core import (
    UpstreamError,
    forwarded_options,
    path_prefix,
    read_refusal,
    relayed_message,
    unsupported_options,
)
from .proxy_fast import FastProxy, fast_path_enabled
from .proxy_observe import Relay
from .upstream import UpstreamClient

__all__ = ["ProxySite", "build_site"]

_READ = (Code.GET, Code.FETCH)
_FAST_KINDS = ("pending", "dedup", "fast_block2")


def build_site(ctx: CoapContext) -> ProxySite:
    """The aiocoap root resource of a proxy-mode listener (every path), and its fast path for plain
    requests (``proxy_fast.py``), which takes them before aiocoap sees them."""
    site = ProxySite(ctx)
    if fast_path_enabled(ctx):
        site.fast = FastProxy(ctx, site.blocks, site.upstream)
        ctx.fast_path = site.fast
    return site


class ProxySite(interfaces.Resource, PathCapable):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self, ctx: CoapContext) -> None:
        super().__init__()
        self.ctx = ctx
        target = ctx.settings.parsed_target
        #: The one client towards the target, shared with the datagram path (upstream.py).
        self.upstream = UpstreamClient(str(target.host), int(target.port), ctx.timeout, ctx.log, ctx.name)
        self.prefix = path_prefix(str(target.path))
        self.max_body = int(getattr(ctx.settings, "max_packet_size", 1 << 20))
        self.relays: set[Relay] = set()
        self.uploads = Block1Assembler()  # the client's Block1 uploads being assembled (blockwise.py)
        #: The one owner of Block2 transfers to clients, shared with the datagram path (blockwise.py).
        self.blocks = Block2Store()
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
            "block1": len(self.uploads),
            "block2": self.blocks.sizes()["block2"],
            **fast,
        }

    def stop(self) -> None:
        """The listener stops (asyncio thread): every observation ends with 5.03, the upstream context
        is shut down."""
        for relay in list(self.relays):
            relay.end(refusal_message(Code.SERVICE_UNAVAILABLE, "server shutting down"))
        if self.fast is not None:
            self.fast.close()
        self.blocks.clear()
        self.uploads.clear()
        self.upstream.close()

    async def shutdown(self) -> None:
        self.stop()

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
            # A later block of a response already served (and authorized): from the store, whose keys hold
            # the peer's address and every option, the credentials included.
            pipe.add_response(self._cached_block(request), is_last=True)
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
                relay = Relay(ctx, self.upstream, pipe, principal, topic, self._fit, self.relays)
                await relay.run(int(request.code), self._forwarded(request), request.mtype != NON)

            await ctx.observers.hold(remote_of(request), pipe, relay)
            return
        refusal = read_refusal(ctx, principal, topic)
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
            whole = self.uploads.feed(self._key(request), request)
            if isinstance(whole, aiocoap.Message):
                pipe.add_response(whole, is_last=True)  # 2.31 Continue, 4.08 Incomplete, 4.00
                return
            payload = whole
        else:
            payload = bytes(request.payload)
        refusal = await authorize(self.ctx, principal, "publish", topic, payload)
        if refusal is not None:
            pipe.add_response(refusal, is_last=True)
            return
        response = await self._exchange(request, payload)
        if block1 is not None:
            response.opt.block1 = block1
        pipe.add_response(response, is_last=True)

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
        block2 = request.opt.block2
        if block2 is not None and block2.block_number > 0:
            return self._cached_block(request)
        whole, problem = await self.upstream.request(
            int(request.code), self._forwarded(request), bytes(payload), request.mtype != NON
        )
        if whole is None:
            assert problem is not None
            return UpstreamError(*problem).to_message()
        response = relayed_message(whole)
        return await self._fit(request, response)

    async def _fit(self, request: aiocoap.Message, response: aiocoap.Message) -> aiocoap.Message:
        """``response`` as the client gets it: whole, or its first block (the rest from the store)."""
        block2 = request.opt.block2
        if block2 is not None and block2.block_number > 0:
            block2 = None  # a notification for a registration that asked for a later block: from the start
        remote = request.remote
        if len(response.payload) <= remote.maximum_payload_size and (
            block2 is None or len(response.payload) <= block2.size
        ):
            return response
        key = self._key(request)
        self.blocks.keep(key, int(response.code), options_of(response), bytes(response.payload), fast=False)
        szx = block2.size_exponent if block2 is not None else remote.maximum_block_size_exp
        block = self.blocks.block(key, 0, min(szx, 6))
        assert block is not None  # just kept
        return as_message(block)

    def _cached_block(self, request: aiocoap.Message) -> aiocoap.Message:
        block2 = request.opt.block2
        block = self.blocks.block(self._key(request), block2.block_number, block2.size_exponent)
        if block is None:
            return aiocoap.Message(code=Code.REQUEST_ENTITY_INCOMPLETE)
        return as_message(block)

    def _forwarded(self, request: aiocoap.Message) -> list[tuple[int, bytes]]:
        return forwarded_options(options_of(request), self.prefix)

    def _key(self, request: aiocoap.Message) -> tuple[Any, ...]:
        return message_key(remote_of(request), request)


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
            multiprocess_mode="livesum",  # worker processes: summed over the live ones
        )
        ctx.metrics.coap_proxy_state = gauge  # type: ignore[attr-defined]
    for kind in ("observations", "block1", "block2", *_FAST_KINDS):
        gauge.labels(ctx.name, kind).set_function(_reader(site, kind))


def _reader(site: ProxySite, kind: str) -> Callable[[], float]:
    return lambda: float(site.state_sizes()[kind])
