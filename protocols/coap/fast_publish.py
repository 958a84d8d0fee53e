"""The datagram transport of CoAP -> MQTT mode: plain POST / PUT requests answered without aiocoap.

aiocoap's request path (decode into a ``Message``, message layer, request layer, a task per request,
encode) was about half of the gateway's CPU per publish (bench/coap_publish.py). This module takes the
requests that need none of it, read with ``codec.parse``, and answers them with ``codec.encode``; every
other datagram goes to aiocoap unchanged (``codec.FastPath``, installed as ``ctx.fast_path`` by
``PublishSite``). What a request means is decided by the request core both transports share
(``publish_core.PublishCore``): this module only reads, authenticates, deduplicates and answers.

**Eligible** (everything else goes to aiocoap, which gives the same answers, the Block1 and 4.02 rules
included): type CON or NON; code POST or PUT; options only Uri-Path, Uri-Query, Content-Format and Accept
(no Block1 / Block2 / Size1 / Observe / Uri-Host / Proxy-Uri, no unknown option, elective or critical);
every Uri-Path and Uri-Query value valid UTF-8 (aiocoap drops the others); payload at most
:data:`MAX_PAYLOAD` bytes and within ``max_packet_size``; the listener not stopping; not a DTLS listener.

**Answers** are the slow path's (mqtt_site.py), status codes, diagnostic payloads, refusal counts and
handler notifications and interceptors included (the same code does the work: ``auth.check`` and
``publish_core.PublishCore``): a CON request is answered by a piggybacked ACK (its message id and token),
a NON one by a NON response with the token and a fresh message id (this module's own counter, from a
random start). The answer is always piggybacked, however long the publish takes (at most
``connect_timeout``, then 5.03): the client's retransmissions meanwhile are absorbed by the deduplication
below, and the answer reaches it either way. (aiocoap sends an empty ACK after 0.1 s and the answer as a
separate CON; not needed here.)

**Deduplication** (RFC 7252 §4.5). A request's (peer address, message id) is remembered with its answer:
a CON retransmission within EXCHANGE_LIFETIME (247 s) is answered with the remembered answer (ignored
while the first is in progress), a duplicate NON within NON_LIFETIME (145 s) is ignored; neither publishes
again. The memory is bounded: at most :data:`DEDUP_MAX` exchanges (oldest out first, about 200 bytes
each: ~13 MB at the cap), each forgotten when its lifetime ends. At a sustained rate above
``DEDUP_MAX / 247`` ≈ 265 requests/s the cap comes first: the window is then ``DEDUP_MAX / rate`` seconds
(13 s at 5,000 requests/s), which still covers a client's first retransmissions (2-3 s, then 4-6 s and
8-12 s after it) — not its fourth (after 30-45 s) at that rate.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiocoap.numbers.codes import Code

from ferryman.actors.contracts import Grant
from ferryman.protocols.addresses import plain_address

from .auth import (
    INVALID,
    CoapListenerState,
    Credentials,
    Entry,
    Principal,
    credential_refusal,
    credentials_from_queries,
    refusal_message,
)
from .codec import (
    ACCEPT,
    ACK,
    CON,
    CONTENT_FORMAT,
    NON,
    URI_PATH,
    URI_QUERY,
    answer_room,
    encode,
    fit,
    parse,
)
from .publish_core import Answer

__all__ = [
    "DEDUP_MAX",
    "EXCHANGE_LIFETIME",
    "MAX_PAYLOAD",
    "NON_LIFETIME",
    "Dedup",
    "FastPublish",
    "PublishTarget",
]


class PublishTarget(Protocol):
    """What the datagram transport uses of its request core (``publish_core.PublishCore``)."""

    ctx: CoapListenerState

    def publish(
        self,
        who: Principal,
        topic: str,
        payload: bytes,
        queries: Iterable[str],
        done: Callable[[Answer], None],
    ) -> None: ...


#: Larger payloads go to aiocoap (block-wise clients send at most 1024-byte blocks anyway).
MAX_PAYLOAD = 1024
#: RFC 7252 §4.8.2 with the default transmission parameters.
EXCHANGE_LIFETIME = 247.0
NON_LIFETIME = 145.0
#: Remembered exchanges at most (see the module docstring).
DEDUP_MAX = 65536

_POST, _PUT = 0x02, 0x03
_INTERNAL_SERVER_ERROR = int(Code.INTERNAL_SERVER_ERROR)
_ALLOWED = frozenset({URI_PATH, URI_QUERY, CONTENT_FORMAT, ACCEPT})
_PENDING = b""  # the answer of an exchange still in progress

Reply = Callable[[bytes], None]


class _Exchange:
    __slots__ = ("answer", "expires")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.answer = _PENDING


class Dedup:
    """(peer address, message id) -> the answer sent (or :data:`_PENDING`), bounded by count and age.

    Exchanges are added in time order, so one FIFO serves both bounds: the oldest is dropped when the
    count passes ``max_entries`` or when its lifetime is over (checked on every insertion)."""

    def __init__(self, max_entries: int = DEDUP_MAX) -> None:
        self.max_entries = max_entries
        self._map: dict[tuple[Any, int], _Exchange] = {}
        self._order: deque[tuple[tuple[Any, int], _Exchange]] = deque()

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: tuple[Any, int], now: float) -> _Exchange | None:
        exchange = self._map.get(key)
        if exchange is not None and exchange.expires <= now:
            return None
        return exchange

    def add(self, key: tuple[Any, int], lifetime: float, now: float) -> _Exchange:
        exchange = _Exchange(now + lifetime)
        self._map[key] = exchange
        order = self._order
        order.append((key, exchange))
        # Lifetimes differ (CON 247 s, NON 145 s): a NON exchange may outlive its end by at most 102 s
        # behind an older CON one, within the count cap all the same.
        while order and (len(order) > self.max_entries or order[0][1].expires <= now):
            old_key, old = order.popleft()
            if self._map.get(old_key) is old:
                del self._map[old_key]
        return exchange


class FastPublish:
    """``codec.FastPath`` of a :class:`PublishSite` (called in the asyncio thread, per datagram)."""

    def __init__(self, core: PublishTarget) -> None:
        self.core = core
        self.ctx = core.ctx
        self.dedup = Dedup()
        self.max_payload = min(MAX_PAYLOAD, int(core.ctx.settings.max_packet_size))
        self._mid = int.from_bytes(os.urandom(2), "big")
        #: Requests taken (diagnostics, tests).
        self.taken = 0

    def __call__(self, data: bytes, address: Any, reply: Reply) -> bool:
        # Cheapest checks first: version 1, CON / NON (0x40 / 0x50), POST / PUT.
        if len(data) < 4 or data[0] & 0xE0 != 0x40 or data[1] not in (_POST, _PUT):
            return False
        ctx = self.ctx
        if ctx.stopping:
            return False  # aiocoap answers 5.03
        msg = parse(data)
        if msg is None or len(msg.payload) > self.max_payload:
            return False
        path: list[str] = []
        queries: list[str] = []
        try:
            for number, value in msg.options:
                if number == URI_PATH:
                    path.append(value.decode())
                elif number == URI_QUERY:
                    queries.append(value.decode())
                elif number not in _ALLOWED:
                    return False
        except UnicodeDecodeError:
            return False  # aiocoap drops these (listener._guard_decoding)
        now = time.monotonic()
        key = (address, msg.mid)
        known = self.dedup.get(key, now)
        if known is not None:
            if msg.mtype == CON and known.answer:
                reply(known.answer)  # a retransmission: the same answer again
            return True  # in progress, or a duplicate NON: nothing more
        exchange = self.dedup.add(key, EXCHANGE_LIFETIME if msg.mtype == CON else NON_LIFETIME, now)
        self.taken += 1
        con = msg.mtype == CON
        token = msg.token
        request_mid = msg.mid

        size = len(data)

        def answer(code: int, payload: bytes = b"", unauthenticated: bool = False) -> None:  # asyncio thread
            if unauthenticated:  # never larger than the request (UDP sources can be spoofed)
                payload = fit(payload, answer_room(size, token))
            if con:
                out = encode(ACK, code, request_mid, token, (), payload)
            else:
                self._mid = mid = (self._mid + 1) & 0xFFFF
                out = encode(NON, code, mid, token, (), payload)
            exchange.answer = out
            reply(out)

        creds = credentials_from_queries(queries)
        if creds is None:
            ctx.count_refusal("connect")
            _refuse(
                answer,
                refusal_message(Code.UNAUTHORIZED, "credentials required: ?auth=<username>:<password>"),
                unauthenticated=True,
            )
            return True
        if creds is INVALID:
            ctx.count_refusal("connect")
            _refuse(answer, refusal_message(Code.UNAUTHORIZED, "empty auth option"), unauthenticated=True)
            return True
        remote = plain_address(address)
        entry = ctx.auth.lookup(remote, creds)
        request = (path, queries, msg.payload)
        if entry is not None:
            self._authenticated(entry, request, answer)
        else:
            asyncio.get_running_loop().create_task(self._decide(remote, creds, request, answer))
        return True

    async def _decide(
        self,
        remote: tuple[str, int],
        creds: Credentials,
        request: tuple[list[str], list[str], bytes],
        answer: Callable[..., None],
    ) -> None:
        ctx = self.ctx
        try:
            entry = await ctx.auth.decide(remote, creds)
        except Exception as exc:
            ctx.log("ERROR", "listener {!r}: authentication of {} failed: {!r}", ctx.name, remote, exc)
            answer(_INTERNAL_SERVER_ERROR)
            return
        self._authenticated(entry, request, answer)

    def _authenticated(
        self, entry: Entry, request: tuple[list[str], list[str], bytes], answer: Callable[..., None]
    ) -> None:
        """From the authentication on: the request core decides and answers."""
        decision = entry.decision
        if not isinstance(decision, Grant):
            self.ctx.count_refusal("connect")
            _refuse(answer, credential_refusal(decision), unauthenticated=True)
            return
        path, queries, payload = request
        self.core.publish(Principal(entry), "/".join(path), payload, queries, lambda a: answer(*a))


def _refuse(answer: Callable[..., None], message: Any, unauthenticated: bool = False) -> None:
    answer(int(message.code), bytes(message.payload), unauthenticated)
