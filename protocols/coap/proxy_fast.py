"""The fast path of CoAP proxy mode: plain requests forwarded without aiocoap on either side.

aiocoap does a lot of work per message (message and token managers, pipes, a task per request, endpoint
objects), and the proxy paid it twice per request, server side and client side. The listener offers every
datagram to ``ctx.fast_path`` first (codec.FastPath); :class:`FastProxy` takes the plain ones and forwards
them over one raw UDP socket (an asyncio ``DatagramProtocol`` on the same loop, opened on first use):

- taken: CON or NON GET (without Observe), POST, PUT, DELETE whose options are only Uri-Path, Uri-Query,
  Content-Format, Accept, ETag, If-Match and If-None-Match, with a payload of at most 1,024 bytes, on a
  plain (not DTLS) listener. Everything else (Observe, Block1 / Block2, Proxy-Uri, Uri-Host, unknown
  options, other methods, string options that are not UTF-8) goes to aiocoap as before (``proxy.py``).
- authentication and authorization are those of the slow path, with the same answers: the remembered
  decision of ``AuthCache`` is looked up synchronously (see :class:`_Sessions`); a pair not (or no longer)
  remembered is decided by ``auth.authenticate`` in a task.
- upstream: a fresh message id and token per request; CON requests are retransmitted with RFC 7252 timing
  (ACK_TIMEOUT 2 s x a random factor up to 1.5, doubled each time, MAX_RETRANSMIT 4); a piggybacked ACK is
  matched by message id and token, a separate response (empty ACK, then a CON or NON response) by token,
  and a CON response is acknowledged. No answer within ``connect_timeout``: 5.04; an ICMP error on the
  socket (target unreachable): 5.02 for every request in flight; an RST: 5.02.
- the answer goes back with the client's token: piggybacked in the ACK of a CON request (whenever it comes:
  a slow target is waited for up to ``connect_timeout``; the client's retransmissions meanwhile are
  ignored), as a NON response to a NON request. Code, payload and options are relayed, minus Observe,
  Block1 / Block2, Size1 / Size2 (the target -> gateway hop).
- a response too large for one datagram (the target answers in Block2 blocks, or with a payload over
  aiocoap's 1,124 bytes): the rest of its blocks are fetched from the target here, the whole response is
  kept in :attr:`FastProxy.blocks` and the client gets its first block (1,024 bytes); the client's GETs of
  the later blocks carry Block2 and so go through aiocoap, where ``ProxySite`` serves them from that cache.

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
from types import SimpleNamespace
from typing import Any

import aiocoap
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from ferryman.actors.contracts import Grant

from .auth import AUTH_KEY, Entry, Principal, authenticate, check
from .codec import (
    ACCEPT,
    ACK,
    BLOCK1,
    BLOCK2,
    CON,
    CONTENT_FORMAT,
    ETAG,
    IF_MATCH,
    IF_NONE_MATCH,
    NON,
    OBSERVE,
    RST,
    SIZE1,
    SIZE2,
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
from .proxy_upstream import relayed_response

__all__ = ["SLOW_ENV", "FastProxy", "block_key", "fast_path_enabled"]

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
_RESPONSE_HOP = frozenset({OBSERVE, BLOCK1, BLOCK2, SIZE1, SIZE2})

ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
MAX_TRANSMIT_SPAN = 45.0
MAX_TRANSMIT_WAIT = 93.0
DEDUP_MAX = 16384
BLOCKS_MAX = 64
SESSIONS_MAX = 4096

_GATEWAY_TIMEOUT = int(Code.GATEWAY_TIMEOUT)
_BAD_GATEWAY = int(Code.BAD_GATEWAY)
_SERVICE_UNAVAILABLE = int(Code.SERVICE_UNAVAILABLE)
_UNAUTHORIZED = int(Code.UNAUTHORIZED)
_FORBIDDEN = int(Code.FORBIDDEN)

#: (response, None) or (None, (code, diagnostic)).
Done = Callable[[Datagram | None, tuple[int, str] | None], None]


def fast_path_enabled(ctx: CoapContext) -> bool:
    if ctx.secure:
        return False  # DTLS datagrams are not CoAP messages until decrypted
    slow = {n.strip() for n in os.environ.get(SLOW_ENV, "").split(",") if n.strip()}
    return "*" not in slow and ctx.name not in slow


def block_key(host_port: tuple[str, int], request: aiocoap.Message) -> tuple[Any, ...]:
    """The key of a large response in :attr:`FastProxy.blocks`, the same for every block request."""
    ignore = (OptionNumber.BLOCK1, OptionNumber.BLOCK2, OptionNumber.OBSERVE)
    return (host_port, request.code, request.get_cache_key(ignore))


def _host_port(address: Any) -> tuple[str, int]:
    host = str(address[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(address[1])


class _Client:
    """A request taken from a client, until it is answered."""

    __slots__ = ("address", "data", "dedup", "mid", "mtype", "reply", "token")

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


class _Pending:
    """One request in flight towards the target."""

    __slots__ = ("acked", "con", "deadline", "done", "mid", "out", "timer", "token", "tries", "wait")

    def __init__(self, token: bytes, mid: int, out: bytes, con: bool, deadline: float, done: Done) -> None:
        self.token = token
        self.mid = mid
        self.out = out
        self.con = con
        self.acked = not con
        self.deadline = deadline
        self.done = done
        self.tries = 0
        self.wait = ACK_TIMEOUT * random.uniform(1.0, ACK_RANDOM_FACTOR)
        self.timer: asyncio.TimerHandle | None = None


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: FastProxy) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.from_target(data)

    def error_received(self, exc: Exception) -> None:
        self.owner.target_error(exc)


class _Sessions:
    """A synchronous look-up of ``AuthCache`` decisions: (peer address, ``auth`` value) -> the Entry that
    ``authenticate`` returned. An entry serves while ``AuthCache`` would serve it from memory (granted,
    on_connect told and not yet forgotten, not revoked, not expired) and each use extends it by the cache's
    ttl, as ``decide`` does; otherwise the request goes the slow way (``authenticate``, which asks the
    chain again when needed). ``AuthCache``'s least-recently-used order is not refreshed by these uses: over
    its ``max_entries`` pairs a busy pair may be forgotten (on_disconnect) and asked again."""

    def __init__(self, ctx: CoapContext) -> None:
        self.ctx = ctx
        self.entries: dict[tuple[Any, str], Entry] = {}

    def get(self, key: tuple[Any, str]) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if (
            entry.notified
            and not entry.revoked
            and isinstance(entry.decision, Grant)
            and (entry.expires > now or entry.watchers)
        ):
            entry.expires = now + self.ctx.auth.ttl
            return entry
        del self.entries[key]
        return None

    def put(self, key: tuple[Any, str], entry: Entry) -> None:
        if len(self.entries) >= SESSIONS_MAX:
            self.entries.clear()  # rebuilt from AuthCache as requests come
        self.entries[key] = entry


class FastProxy:
    """``ctx.fast_path`` of a proxy-mode listener (asyncio thread only)."""

    def __init__(self, ctx: CoapContext) -> None:
        self.ctx = ctx
        target = ctx.settings.parsed_target
        self.target = (str(target.host).strip("[]"), int(target.port))
        self.prefix = [(URI_PATH, p.encode()) for p in str(target.path).split("/") if p]
        self.timeout = ctx.timeout
        self.sessions = _Sessions(ctx)
        self.dedup: OrderedDict[Any, list[Any]] = OrderedDict()  # key -> [arrival, answer bytes | None]
        self.blocks: OrderedDict[Any, tuple[float, aiocoap.Message]] = OrderedDict()
        self.by_token: dict[bytes, _Pending] = {}
        self.by_mid: dict[int, _Pending] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._opening: asyncio.Future[asyncio.DatagramTransport] | None = None
        self._mid = random.getrandbits(16)
        self._token = random.getrandbits(32)
        self._client_mid = random.getrandbits(16)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.taken = 0  # requests taken (for tests and diagnostics)

    def sizes(self) -> dict[str, int]:
        return {"pending": len(self.by_token), "dedup": len(self.dedup), "fast_block2": len(self.blocks)}

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
        auth: str | None = None
        try:
            for number, value in msg.options:
                limit = _SAFE.get(number)
                if limit is None or len(value) > limit:
                    return False
                if number == URI_PATH:
                    paths.append(value.decode())
                elif number == URI_QUERY:
                    query = value.decode()
                    if auth is None and query.partition("=")[0] == AUTH_KEY:
                        auth = query
        except UnicodeDecodeError:
            return False  # aiocoap drops it (garbage)
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
        ctx = self.ctx
        if ctx.stopping or self.closed:
            self._answer(client, _SERVICE_UNAVAILABLE, (), b"server shutting down", unauthenticated=True)
            return True
        entry = self.sessions.get((address, auth)) if auth is not None else None
        if entry is None:
            self._spawn(self._authenticate(client, msg, paths, auth))
            return True
        self._authorized(client, msg, paths, Principal(entry))
        return True

    async def _authenticate(self, client: _Client, msg: Datagram, paths: list[str], auth: str | None) -> None:
        """The slow path's ``authenticate`` (it asks the chain when the pair is not remembered)."""
        queries = tuple(v.decode() for n, v in msg.options if n == URI_QUERY)
        shim: Any = SimpleNamespace(
            opt=SimpleNamespace(uri_query=queries), remote=SimpleNamespace(sockaddr=client.address)
        )
        try:
            principal = await authenticate(self.ctx, shim)
        except Exception as exc:
            self.ctx.log("error", "listener {!r}: authentication failed: {!r}", self.ctx.name, exc)
            self._answer(
                client, _SERVICE_UNAVAILABLE, (), b"authentication unavailable", unauthenticated=True
            )
            return
        if isinstance(principal, aiocoap.Message):
            self._answer(client, int(principal.code), (), principal.payload, unauthenticated=True)
            return
        if auth is not None:
            self.sessions.put((client.address, auth), principal.entry)
        self._authorized(client, msg, paths, principal)

    def _authorized(self, client: _Client, msg: Datagram, paths: list[str], principal: Principal) -> None:
        topic = "/".join(paths)
        if msg.code == _GET:
            grant = principal.grant
            if grant is None:
                self._answer(client, _UNAUTHORIZED, (), b"revoked")
                return
            if not grant.auth_subscribe(topic):
                self.ctx.count_refusal("subscribe")
                self._answer(client, _FORBIDDEN, (), f"not allowed: {topic}".encode()[:128])
                return
        else:
            refusal = check(self.ctx, principal, "publish", topic, msg.payload)
            if refusal is not None:
                self._answer(client, int(refusal.code), (), refusal.payload)
                return
        options = self._forwarded_options(msg.options)
        con = msg.mtype == CON

        def done(response: Datagram | None, problem: tuple[int, str] | None) -> None:
            self._relay(client, msg, options, con, response, problem)

        self.send(msg.code, options, msg.payload, con, done)

    def _forwarded_options(self, options: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        prefix = self.prefix
        for number, value in options:
            if prefix and number >= URI_PATH:
                out.extend(prefix)
                prefix = []
            if number in (URI_HOST, URI_PORT):
                continue
            if number == URI_QUERY and value.partition(b"=")[0] == b"auth":
                continue
            out.append((number, value))
        if prefix:
            out.extend(prefix)
        return out

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
        payload = first.payload
        etag = first.option(ETAG)
        block2 = first.option(BLOCK2)
        try:
            while block2 is not None and _block_more(block2):
                value = int.from_bytes(block2, "big")
                size = 1 << ((value & 7) + 4)
                if len(payload) % size:
                    raise ValueError("block sizes do not add up")
                ask = sorted([*options, (BLOCK2, uint((len(payload) // size) << 4 | (value & 7)))], key=_num)
                response, problem = await self._exchange(code, ask, con)
                if response is None:
                    assert problem is not None
                    self._answer(client, problem[0], (), problem[1].encode()[:128])
                    return
                block2 = response.option(BLOCK2)
                if block2 is None:  # the target gave up the block-wise transfer: its answer as it is
                    first, payload = response, response.payload
                    break
                if (
                    response.option(ETAG) != etag
                    or int.from_bytes(block2, "big") >> 4 != len(payload) // size
                ):
                    raise ValueError("the resource changed during a block-wise transfer")
                payload += response.payload
        except ValueError as exc:
            self._answer(client, _BAD_GATEWAY, (), f"bad answer from the target: {exc}".encode()[:128])
            return
        kept = [o for o in first.options if o[0] not in _RESPONSE_HOP]
        if len(payload) <= _MAX_WHOLE:
            self._answer(client, first.code, kept, payload)
            return
        whole = relayed_response(aiocoap.Message.decode(encode(ACK, first.code, 0, b"", kept, payload)))
        request = aiocoap.Message.decode(client.data)
        self._keep(block_key(_host_port(client.address), request), whole)
        size = 1 << (_BLOCK_SZX + 4)
        first_block = sorted([*kept, (BLOCK2, uint(8 | _BLOCK_SZX))], key=_num)
        self._answer(client, first.code, first_block, payload[:size])

    def _keep(self, key: Any, whole: aiocoap.Message) -> None:
        blocks = self.blocks
        now = time.monotonic()
        blocks[key] = (now, whole)
        blocks.move_to_end(key)
        self._expire_blocks(now)

    def _expire_blocks(self, now: float) -> None:
        blocks = self.blocks
        while len(blocks) > BLOCKS_MAX:
            blocks.popitem(last=False)
        while blocks and next(iter(blocks.values()))[0] <= now - MAX_TRANSMIT_WAIT:
            blocks.popitem(last=False)

    def cached_block(self, host_port: tuple[str, int], request: aiocoap.Message) -> aiocoap.Message | None:
        """A later block of a large response taken here (None: not one of ours). Used by ProxySite for a
        request with Block2 (aiocoap's path), after it authenticated it."""
        now = time.monotonic()
        self._expire_blocks(now)
        key = block_key(host_port, request)
        kept = self.blocks.get(key)
        if kept is None:
            return None
        whole = kept[1]
        self.blocks[key] = (now, whole)
        self.blocks.move_to_end(key)
        block2 = request.opt.block2
        try:
            block: aiocoap.Message = whole._extract_block(
                block2.block_number, block2.size_exponent, request.remote.maximum_payload_size
            )
        except coap_error.Error as exc:
            refusal: aiocoap.Message = exc.to_message()
            return refusal
        if not block.opt.block2.more:
            self.blocks.pop(key, None)  # served to the end
        return block

    # -- the target side -------------------------------------------------------------------------------
    def _exchange(
        self, code: int, options: list[tuple[int, bytes]], con: bool
    ) -> asyncio.Future[tuple[Datagram | None, tuple[int, str] | None]]:
        future: asyncio.Future[tuple[Datagram | None, tuple[int, str] | None]] = (
            asyncio.get_running_loop().create_future()
        )

        def done(response: Datagram | None, problem: tuple[int, str] | None) -> None:
            if not future.done():
                future.set_result((response, problem))

        self.send(code, options, b"", con, done)
        return future

    def send(
        self, code: int, options: list[tuple[int, bytes]], payload: bytes, con: bool, done: Done
    ) -> None:
        """Sends a request to the target; ``done`` gets its response or the problem (once)."""
        transport = self._transport
        if transport is None:
            self._spawn(self._send_when_open(code, options, payload, con, done))
            return
        self._mid = mid = (self._mid + 1) & 0xFFFF
        self._token = (self._token + 1) & 0xFFFFFFFF
        token = self._token.to_bytes(4, "big")
        out = encode(CON if con else NON, code, mid, token, options, payload)
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = _Pending(token, mid, out, con, now + self.timeout, done)
        self.by_token[token] = pending
        if con:
            self.by_mid[mid] = pending
        pending.timer = loop.call_at(
            min(now + pending.wait, pending.deadline) if con else pending.deadline, self._tick, pending
        )
        transport.sendto(out)

    async def _send_when_open(
        self, code: int, options: list[tuple[int, bytes]], payload: bytes, con: bool, done: Done
    ) -> None:
        try:
            await self._open()
        except OSError as exc:
            done(None, (_BAD_GATEWAY, f"target unresolvable: {exc}"))
            return
        if self.closed:
            done(None, (_SERVICE_UNAVAILABLE, "server shutting down"))
            return
        self.send(code, options, payload, con, done)

    async def _open(self) -> asyncio.DatagramTransport:
        if self._transport is not None:
            return self._transport
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._create())
        try:
            return await asyncio.shield(self._opening)
        except OSError:
            self._opening = None  # try again with the next request
            raise

    async def _create(self) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamProtocol(self), remote_addr=self.target
        )
        if self.closed:
            transport.close()
            raise OSError("listener stopping")
        self._transport = transport
        return transport

    def _tick(self, pending: _Pending) -> None:
        if self.by_token.get(pending.token) is not pending:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= pending.deadline:
            self._finish(
                pending, None, (_GATEWAY_TIMEOUT, f"no answer from the target in {self.timeout:g} s")
            )
            return
        if not pending.acked:
            if pending.tries >= MAX_RETRANSMIT:
                self._finish(pending, None, (_GATEWAY_TIMEOUT, "the target did not acknowledge"))
                return
            pending.tries += 1
            pending.wait *= 2
            if self._transport is not None:
                self._transport.sendto(pending.out)
            pending.timer = loop.call_at(min(now + pending.wait, pending.deadline), self._tick, pending)
        else:
            pending.timer = loop.call_at(pending.deadline, self._tick, pending)

    def _finish(self, pending: _Pending, response: Datagram | None, problem: tuple[int, str] | None) -> None:
        self.by_token.pop(pending.token, None)
        if self.by_mid.get(pending.mid) is pending:
            del self.by_mid[pending.mid]
        if pending.timer is not None:
            pending.timer.cancel()
        try:
            pending.done(response, problem)
        except Exception as exc:  # a bug must cost this request, never the socket
            self.ctx.log("error", "listener {!r}: relaying an answer failed: {!r}", self.ctx.name, exc)

    def from_target(self, data: bytes) -> None:
        msg = parse(data)
        if msg is None:
            return
        mtype = msg.mtype
        if mtype >= ACK:
            pending = self.by_mid.get(msg.mid)
            if pending is None:
                return
            if mtype == RST:
                self._finish(pending, None, (_BAD_GATEWAY, "the target reset the request"))
                return
            del self.by_mid[msg.mid]
            pending.acked = True
            if msg.code == 0:
                return  # an empty ACK: a separate response follows
            if msg.token == pending.token:
                self._finish(pending, msg, None)
            return
        if mtype == CON and self._transport is not None:
            # acknowledged even when no longer wanted (a retransmission, or after the 5.04)
            self._transport.sendto(encode(ACK, 0, msg.mid))
        if msg.code < 64:
            return  # a request or a ping: this socket serves nobody
        pending = self.by_token.get(msg.token)
        if pending is not None:
            self._finish(pending, msg, None)

    def target_error(self, exc: Exception) -> None:
        """An ICMP error on the connected socket (port or host unreachable): every request in flight to
        the target fails with 5.02."""
        reason = f"target unreachable: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        for pending in list(self.by_token.values()):
            self._finish(pending, None, (_BAD_GATEWAY, reason))

    def close(self) -> None:
        """The listener stops: requests in flight get 5.03, the socket is closed, the state dropped."""
        self.closed = True
        for pending in list(self.by_token.values()):
            self._finish(pending, None, (_SERVICE_UNAVAILABLE, "server shutting down"))
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.dedup.clear()
        self.blocks.clear()
        self.sessions.entries.clear()


def _block_more(value: bytes) -> bool:
    return bool(int.from_bytes(value, "big") & 8)


def _num(option: tuple[int, bytes]) -> int:
    return option[0]
