"""The datagram transport of CoAP proxy mode: plain requests forwarded without aiocoap on either side.

aiocoap does a lot of work per message (message and token managers, pipes, a task per request, endpoint
objects): measured with bench/coap_proxy.py, the proxy through aiocoap's path reaches a ratio of 0.33 of
the target's own rate, through this path 0.85 (the same host, the same run). The listener offers every
datagram to ``ctx.fast_path`` first (codec.FastPath); :class:`FastProxy` takes the plain ones and forwards
them with the listener's one upstream client (``upstream.UpstreamClient``, which aiocoap's path uses too):

- taken: CON or NON GET (without Observe), POST, PUT, DELETE whose options are only Uri-Path, Uri-Query,
  Content-Format, Accept, ETag, If-Match and If-None-Match, with a payload of at most 1,024 bytes, on a
  plain (not DTLS) listener. Everything else (Observe, Block1 / Block2, Proxy-Uri, Uri-Host, unknown
  options, other methods, string options that are not UTF-8) goes to aiocoap as before (``proxy.py``).
- authentication and authorization are those of the slow path, with the same answers, through the
  listener's one ``AuthCache``: a remembered decision is looked up synchronously (``AuthCache.lookup``), a
  pair not (or no longer) remembered is decided by ``AuthCache.decide`` in a task.
- upstream (``upstream.py``): retransmissions with RFC 7252 timing, no answer within ``connect_timeout``:
  5.04; an ICMP error on the socket (target unreachable): 5.02 for every request in flight; an RST: 5.02.
- the answer goes back with the client's token: piggybacked in the ACK of a CON request (whenever it comes:
  a slow target is waited for up to ``connect_timeout``; the client's retransmissions meanwhile are
  ignored), as a NON response to a NON request. Code, payload and options are relayed, minus Observe,
  Block1 / Block2, Size1 / Size2 (the target -> gateway hop).
- a response too large for one datagram (the target answers in Block2 blocks, or with a payload over
  aiocoap's 1,124 bytes): the rest of its blocks are fetched from the target here, the whole response is
  kept in the listener's one ``blockwise.Block2Store`` and the client gets its first block (1,024 bytes);
  the client's GETs of the later blocks (a plain GET with Block2) are served from that store here too, so
  the transfer starts and ends on this path (aiocoap's path serves the store's blocks to the requests this
  path does not take).

State, all bounded and visible in ``ferryman_coap_proxy_state{kind}``:

- ``pending``: requests in flight towards the target; each leaves on its answer, its 5.04 or an error.
- ``dedup``: the client's CON requests by (peer, message id) (RFC 7252 4.5): a retransmission of one in
  flight is ignored, one already answered gets the same answer again, and the target sees it once. Kept
  MAX_TRANSMIT_SPAN (45 s) after arrival and at most 16,384 (the oldest go first).
- ``fast_block2``: whole large responses being served in blocks: 93 s (MAX_TRANSMIT_WAIT) after their
  last use, at most 64.

``COAP_PROXY_SLOW_LISTENERS`` (environment, comma-separated listener names, ``*`` for all) turns the fast
path off for those listeners: for comparisons in tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from aiocoap.numbers.codes import Code

from ferryman.actors.contracts import Grant
from ferryman.protocols.addresses import plain_address

from .auth import INVALID, Credentials, Entry, Principal, check, credential_refusal, credentials_from_queries
from .blockwise import RESPONSE_HOP as _RESPONSE_HOP
from .blockwise import Block2Store, cache_key
from .codec import (
    ACCEPT,
    ACK,
    BLOCK2,
    CON,
    CONTENT_FORMAT,
    ETAG,
    IF_MATCH,
    IF_NONE_MATCH,
    NON,
    URI_HOST,
    URI_PATH,
    URI_PORT,
    URI_QUERY,
    Datagram,
    answer_room,
    encode,
    fit,
    parse,
    uint,
)
from .context import CoapContext
from .proxy_core import forwarded_options, path_prefix, read_refusal
from .upstream import UpstreamClient

__all__ = ["SLOW_ENV", "FastProxy", "fast_path_enabled"]

SLOW_ENV = "COAP_PROXY_SLOW_LISTENERS"

_GET, _POST, _PUT, _DELETE = 1, 2, 3, 4
_METHODS = frozenset({_GET, _POST, _PUT, _DELETE})
#: Options a taken request may carry, with the largest value length accepted (longer: aiocoap's path).
_SAFE = {
    IF_MATCH: 8,
    URI_HOST: 255,  # Uri-Host and Uri-Port belong to the client's hop: not forwarded (as on the slow path)
    URI_PORT: 2,
    ETAG: 8,
    IF_NONE_MATCH: 0,
    URI_PATH: 255,
    CONTENT_FORMAT: 2,
    URI_QUERY: 255,
    ACCEPT: 2,
}
_MAX_REQUEST_PAYLOAD = 1024
#: aiocoap serves a response whole up to this payload size (``EndpointAddress.maximum_payload_size``).
_MAX_WHOLE = 1124
_BLOCK_SZX = 6  # 1,024-byte blocks (aiocoap's MAX_REGULAR_BLOCK_SIZE_EXP)

MAX_TRANSMIT_SPAN = 45.0
DEDUP_MAX = 16384

_BAD_GATEWAY = int(Code.BAD_GATEWAY)
_SERVICE_UNAVAILABLE = int(Code.SERVICE_UNAVAILABLE)
_UNAUTHORIZED = int(Code.UNAUTHORIZED)
_REQUEST_ENTITY_INCOMPLETE = int(Code.REQUEST_ENTITY_INCOMPLETE)
_CREDENTIALS_REQUIRED = b"credentials required: ?auth=<username>:<password>"


def fast_path_enabled(ctx: CoapContext) -> bool:
    if ctx.secure:
        return False  # DTLS datagrams are not CoAP messages until decrypted
    slow = {n.strip() for n in os.environ.get(SLOW_ENV, "").split(",") if n.strip()}
    return "*" not in slow and ctx.name not in slow


class _Client:
    """A request taken from a client, until it is answered."""

    __slots__ = ("address", "data", "dedup", "later", "mid", "mtype", "reply", "token")

    def __init__(
        self, data: bytes, address: Any, reply: Callable[[bytes], None], msg: Datagram, dedup: Any
    ) -> None:
        self.data = data
        self.address = address
        self.reply = reply
        self.mtype = msg.mtype
        self.mid = msg.mid
        self.token = msg.token
        self.dedup = dedup  # the key in FastProxy.dedup (CON), or None
        self.later: tuple[tuple[Any, ...], int, int] | None = None  # a later block: (key, number, szx)


class FastProxy:
    """``ctx.fast_path`` of a proxy-mode listener (asyncio thread only)."""

    def __init__(self, ctx: CoapContext, blocks: Block2Store, upstream: UpstreamClient) -> None:
        self.ctx = ctx
        target = ctx.settings.parsed_target
        self.prefix = path_prefix(str(target.path))
        self.upstream = upstream  # the listener's one client towards the target (upstream.py)
        self.dedup: OrderedDict[Any, list[Any]] = OrderedDict()  # key -> [arrival, answer bytes | None]
        self.blocks = blocks  # the listener's Block2 transfers (blockwise.py), shared with aiocoap's path
        self._client_mid = random.getrandbits(16)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.taken = 0  # requests taken (for tests and diagnostics)

    def sizes(self) -> dict[str, int]:
        return {
            "pending": self.upstream.pending,
            "dedup": len(self.dedup),
            "fast_block2": self.blocks.sizes()["fast_block2"],
        }

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the client side -------------------------------------------------------------------------------
    def __call__(self, data: bytes, address: Any, reply: Callable[[bytes], None]) -> bool:
        msg = parse(data)
        if (
            msg is None
            or msg.mtype > NON
            or msg.code not in _METHODS
            or len(msg.payload) > _MAX_REQUEST_PAYLOAD
        ):
            return False
        paths: list[str] = []
        queries: list[str] = []
        block2: bytes | None = None
        try:
            for number, value in msg.options:
                limit = _SAFE.get(number)
                if limit is None or len(value) > limit:
                    if number == BLOCK2 and msg.code == _GET and len(value) <= 3:
                        block2 = value  # a later block of a response kept in the store? (below)
                        continue
                    return False
                if number == URI_PATH:
                    paths.append(value.decode())
                elif number == URI_QUERY:
                    queries.append(value.decode())
        except UnicodeDecodeError:
            return False  # aiocoap drops it (garbage)
        later = None
        if block2 is not None:
            block = int.from_bytes(block2, "big")
            key = cache_key(plain_address(address), msg.code, msg.options)
            if block >> 4 == 0 or not self.blocks.has(key):
                return False  # a first block asked for, or a transfer this store does not hold: aiocoap's
            later = (key, block >> 4, block & 7)
        self.taken += 1
        dedup = None
        if msg.mtype == CON:
            dedup = (address, msg.mid)
            seen = self.dedup.get(dedup)
            if seen is not None:
                if seen[1] is not None:
                    reply(seen[1])
                return True  # in flight: the answer will come
            self._remember(dedup)
        client = _Client(data, address, reply, msg, dedup)
        client.later = later
        ctx = self.ctx
        if ctx.stopping or self.closed:
            self._answer(client, _SERVICE_UNAVAILABLE, (), b"server shutting down", unauthenticated=True)
            return True
        creds = credentials_from_queries(queries)
        if creds is None or creds is INVALID:
            ctx.count_refusal("connect")
            why = b"empty auth option" if creds is INVALID else _CREDENTIALS_REQUIRED
            self._answer(client, _UNAUTHORIZED, (), why, unauthenticated=True)
            return True
        remote = plain_address(address)
        entry = ctx.auth.lookup(remote, creds)  # the listener's one cache of the chain's decisions
        if entry is None:
            self._spawn(self._authenticate(client, msg, paths, remote, creds))
        else:
            self._decided(client, msg, paths, entry)
        return True

    async def _authenticate(
        self, client: _Client, msg: Datagram, paths: list[str], remote: tuple[str, int], creds: Credentials
    ) -> None:
        """Asks the chain (through ``AuthCache.decide``) for a pair it does not remember."""
        try:
            entry = await self.ctx.auth.decide(remote, creds)
        except Exception as exc:
            self.ctx.log("error", "listener {!r}: authentication failed: {!r}", self.ctx.name, exc)
            self._answer(
                client, _SERVICE_UNAVAILABLE, (), b"authentication unavailable", unauthenticated=True
            )
            return
        self._decided(client, msg, paths, entry)

    def _decided(self, client: _Client, msg: Datagram, paths: list[str], entry: Entry) -> None:
        if not isinstance(entry.decision, Grant):
            self.ctx.count_refusal("connect")
            refusal = credential_refusal(entry.decision)
            self._answer(client, int(refusal.code), (), refusal.payload, unauthenticated=True)
            return
        if client.later is not None:
            # A later block of a response already served (and authorized) to this peer with these options,
            # the credentials included (they are part of the key).
            block = self.blocks.block(*client.later)
            if block is None:  # expired meanwhile
                self._answer(client, _REQUEST_ENTITY_INCOMPLETE, (), b"")
                return
            self._answer(client, *block)
            return
        self._authorized(client, msg, paths, Principal(entry))

    def _authorized(self, client: _Client, msg: Datagram, paths: list[str], principal: Principal) -> None:
        topic = "/".join(paths)
        if msg.code == _GET:
            refusal = read_refusal(self.ctx, principal, topic)
        else:
            refusal = check(self.ctx, principal, "publish", topic, msg.payload)
        if refusal is not None:
            self._answer(client, int(refusal.code), (), refusal.payload)
            return
        options = forwarded_options(msg.options, self.prefix)
        con = msg.mtype == CON

        def done(response: Datagram | None, problem: tuple[int, str] | None) -> None:
            self._relay(client, msg, options, con, response, problem)

        self.upstream.send(msg.code, options, msg.payload, con, done)

    def _relay(
        self,
        client: _Client,
        msg: Datagram,
        options: list[tuple[int, bytes]],
        con: bool,
        response: Datagram | None,
        problem: tuple[int, str] | None,
    ) -> None:
        if response is None:
            code, reason = problem or (_BAD_GATEWAY, "no answer")
            self._answer(client, code, (), reason.encode()[:128])
            return
        block2 = response.option(BLOCK2)
        if (block2 is not None and _block_more(block2)) or len(response.payload) > _MAX_WHOLE:
            self._spawn(self._large(client, msg.code, options, con, response))
            return
        kept = [o for o in response.options if o[0] not in _RESPONSE_HOP]
        self._answer(client, response.code, kept, response.payload)

    def _answer(
        self,
        client: _Client,
        code: int,
        options: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...],
        payload: bytes,
        unauthenticated: bool = False,
    ) -> None:
        if unauthenticated:  # never larger than the request (UDP sources can be spoofed)
            options = ()
            payload = fit(payload, answer_room(len(client.data), client.token))
        if client.mtype == CON:
            out = encode(ACK, code, client.mid, client.token, options, payload)
            seen = self.dedup.get(client.dedup)
            if seen is not None:
                seen[1] = out
        else:
            self._client_mid = (self._client_mid + 1) & 0xFFFF
            out = encode(NON, code, self._client_mid, client.token, options, payload)
        client.reply(out)

    def _remember(self, key: Any) -> None:
        dedup = self.dedup
        now = time.monotonic()
        dedup[key] = [now, None]
        if len(dedup) > DEDUP_MAX:
            dedup.popitem(last=False)
        horizon = now - MAX_TRANSMIT_SPAN
        while True:
            first = next(iter(dedup.values()))
            if first[0] > horizon:
                return
            dedup.popitem(last=False)

    # -- large responses (Block2 from the target) -----------------------------------------------------
    async def _large(
        self, client: _Client, code: int, options: list[tuple[int, bytes]], con: bool, first: Datagram
    ) -> None:
        """Fetches the rest of a block-wise response, keeps it whole and answers with its first block."""
        whole, problem = await self.upstream.complete(code, options, con, first)
        if whole is None:
            assert problem is not None
            self._answer(client, problem[0], (), problem[1].encode()[:128])
            return
        kept = [o for o in whole.options if o[0] not in _RESPONSE_HOP]
        payload = whole.payload
        if len(payload) <= _MAX_WHOLE:
            self._answer(client, whole.code, kept, payload)
            return
        request = parse(client.data)
        assert request is not None  # it was parsed when it was taken
        key = cache_key(plain_address(client.address), request.code, request.options)
        self.blocks.keep(key, whole.code, kept, payload, fast=True)
        size = 1 << (_BLOCK_SZX + 4)
        first_block = sorted([*kept, (BLOCK2, uint(8 | _BLOCK_SZX))], key=_num)
        self._answer(client, whole.code, first_block, payload[:size])

    def close(self) -> None:
        """The listener stops: the state is dropped (the upstream client, ``ProxySite``'s, answers what is
        in flight with 5.03)."""
        self.closed = True
        self.dedup.clear()


def _block_more(value: bytes) -> bool:
    return bool(int.from_bytes(value, "big") & 8)


def _num(option: tuple[int, bytes]) -> int:
    return option[0]
