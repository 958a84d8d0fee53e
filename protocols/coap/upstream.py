"""The one upstream CoAP client of proxy mode: every request forwarded to the ``coap://`` target, from either
transport (the datagram path of ``proxy_fast.py`` and aiocoap's path of ``proxy.py``), Observe included,
goes over one raw UDP socket per listener (an asyncio ``DatagramProtocol`` on the shared loop, connected to
the target, opened on first use). Messages are read with ``codec.parse`` and made with ``codec.encode``.

It replaced a second client (an aiocoap client context, ``handle_blockwise=True``) that the aiocoap path
used: one client means one retransmission, deduplication and error story towards the target, and no
reaching into aiocoap's message layer to deregister an observation.

- A fresh message id and token per request; CON requests are retransmitted with RFC 7252 timing
  (ACK_TIMEOUT 2 s x a random factor up to 1.5, doubled each time, MAX_RETRANSMIT 4); a piggybacked ACK is
  matched by message id and token, a separate response (empty ACK, then a CON or NON response) by token,
  and a CON response is acknowledged. No answer within ``connect_timeout``: 5.04; an ICMP error on the
  socket (target unreachable): 5.02 for every request in flight and every observation; an RST: 5.02.
- :meth:`UpstreamClient.request` does the block-wise work a client must (RFC 7959): a payload over 1,024
  bytes goes up in Block1 blocks of 1,024 bytes (each answered 2.31 Continue, or the target's final
  answer), and a response in Block2 blocks is fetched to its end and returned whole.
- :meth:`UpstreamClient.observe` registers an observation (Observe 0) and hands every message of its token
  to a callback until it is cancelled; cancelling tells the target at once (a NON GET with Observe 1 on
  the token, RFC 7641 3.6). A notification of a token no longer observed is answered RST.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from aiocoap.numbers.codes import Code

from .codec import ACK, BLOCK1, BLOCK2, CON, ETAG, NON, OBSERVE, RST, Datagram, encode, parse, uint

__all__ = ["ACK_TIMEOUT", "MAX_RETRANSMIT", "Done", "Problem", "UpstreamClient", "UpstreamObservation"]

ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
#: Blocks sent and asked for: 1,024 bytes (aiocoap's MAX_REGULAR_BLOCK_SIZE_EXP).
BLOCK_SZX = 6
BLOCK_SIZE = 1 << (BLOCK_SZX + 4)

_GATEWAY_TIMEOUT = int(Code.GATEWAY_TIMEOUT)
_BAD_GATEWAY = int(Code.BAD_GATEWAY)
_SERVICE_UNAVAILABLE = int(Code.SERVICE_UNAVAILABLE)
_CONTINUE = int(Code.CONTINUE)
_GET = int(Code.GET)

Options = list[tuple[int, bytes]]
#: Why there is no answer: (the CoAP code to answer the client with, a diagnostic).
Problem = tuple[int, str]
#: (response, None) or (None, problem).
Done = Callable[[Datagram | None, Problem | None], None]


class _Pending:
    """One request in flight towards the target (or an observation: ``observer`` is set)."""

    __slots__ = (
        "acked", "con", "deadline", "done", "mid", "observer", "out", "timer", "token", "tries", "wait"
    )  # fmt: skip

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
        self.observer: UpstreamObservation | None = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UpstreamClient) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.from_target(data)

    def error_received(self, exc: Exception) -> None:
        self.owner.target_error(exc)


class UpstreamObservation:
    """An observation of the target's (asyncio thread): ``on_message`` gets every message of its token
    (the registration's answer first), or (None, problem) once when the target is lost."""

    def __init__(self, client: UpstreamClient, code: int, options: Options, on_message: Done) -> None:
        self.client = client
        self.code = code
        self.options = options  # the registration's, Observe 0 included
        self.on_message = on_message
        self.token: bytes | None = None
        self.registered = False  # the target answered with Observe: it holds an observation
        self.cancelled = False

    def cancel(self) -> None:
        """Ends it; a target that holds it is told at once (NON GET, Observe 1, same token)."""
        if self.cancelled:
            return
        self.cancelled = True
        client = self.client
        token = self.token
        if token is None:
            return
        pending = client.by_token.get(token)
        if pending is not None and pending.observer is self:
            client.forget(pending)
        if self.registered and client.transport is not None:
            options = sorted([*(o for o in self.options if o[0] != OBSERVE), (OBSERVE, uint(1))], key=_number)
            client.mid = mid = (client.mid + 1) & 0xFFFF
            client.transport.sendto(encode(NON, _GET, mid, token, options))


class UpstreamClient:
    """The client towards one target (asyncio thread only)."""

    def __init__(self, host: str, port: int, timeout: float, log: Callable[..., None], name: str) -> None:
        self.target = (host.strip("[]"), port)
        self.timeout = timeout
        self.log = log
        self.name = name
        self.by_token: dict[bytes, _Pending] = {}
        self.by_mid: dict[int, _Pending] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._opening: asyncio.Future[asyncio.DatagramTransport] | None = None
        self.mid = random.getrandbits(16)
        self._token = random.getrandbits(32)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @property
    def pending(self) -> int:
        """Requests in flight (observations that are established are not counted)."""
        return sum(1 for p in self.by_token.values() if p.observer is None)

    # -- one exchange ------------------------------------------------------------------------------------
    def send(
        self,
        code: int,
        options: Options,
        payload: bytes,
        con: bool,
        done: Done,
        observer: UpstreamObservation | None = None,
    ) -> None:
        """Sends one request; ``done`` gets its response or the problem (once; an observation's callback
        gets every message of its token)."""
        transport = self.transport
        if transport is None:
            self._spawn(self._send_when_open(code, options, payload, con, done, observer))
            return
        self.mid = mid = (self.mid + 1) & 0xFFFF
        self._token = (self._token + 1) & 0xFFFFFFFF
        token = self._token.to_bytes(4, "big")
        out = encode(CON if con else NON, code, mid, token, options, payload)
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = _Pending(token, mid, out, con, now + self.timeout, done)
        if observer is not None:
            observer.token = token
            pending.observer = observer
        self.by_token[token] = pending
        if con:
            self.by_mid[mid] = pending
        pending.timer = loop.call_at(
            min(now + pending.wait, pending.deadline) if con else pending.deadline, self._tick, pending
        )
        transport.sendto(out)

    def exchange(self, code: int, options: Options, payload: bytes, con: bool) -> asyncio.Future[Any]:
        """:meth:`send` as a future of (response, problem)."""
        future: asyncio.Future[tuple[Datagram | None, Problem | None]] = (
            asyncio.get_running_loop().create_future()
        )

        def done(response: Datagram | None, problem: Problem | None) -> None:
            if not future.done():
                future.set_result((response, problem))

        self.send(code, options, payload, con, done)
        return future

    # -- whole requests and responses (block-wise) ------------------------------------------------------
    async def request(
        self, code: int, options: Options, payload: bytes, con: bool
    ) -> tuple[Datagram | None, Problem | None]:
        """One request, its payload sent in Block1 blocks when over 1,024 bytes; the response whole."""
        if len(payload) <= BLOCK_SIZE:
            response, problem = await self.exchange(code, options, payload, con)
        else:
            response, problem = await self._upload(code, options, payload, con)
        if response is None:
            return None, problem
        return await self.complete(code, options, con, response)

    async def _upload(
        self, code: int, options: Options, payload: bytes, con: bool
    ) -> tuple[Datagram | None, Problem | None]:
        szx = BLOCK_SZX
        start = 0
        while True:
            size = 1 << (szx + 4)
            number = start // size
            more = start + size < len(payload)
            block1 = (BLOCK1, uint(number << 4 | (8 if more else 0) | szx))
            ask = sorted([*options, block1], key=_number)
            response, problem = await self.exchange(code, ask, payload[start : start + size], con)
            if response is None:
                return None, problem
            if not more or response.code != _CONTINUE:
                return response, None  # the final answer (or the target refused the upload)
            echoed = response.option(BLOCK1)
            start += size
            if echoed is not None:
                asked = int.from_bytes(echoed, "big") & 7
                if asked < szx:  # the target wants smaller blocks from now on (RFC 7959 2.5)
                    szx = asked

    async def complete(
        self, code: int, options: Options, con: bool, first: Datagram
    ) -> tuple[Datagram | None, Problem | None]:
        """``first`` whole: when it is the first block of a Block2 response, the rest is fetched (the same
        request, no payload, no Observe, Block2 asking for the next block)."""
        block2 = first.option(BLOCK2)
        if block2 is None or not _more(block2):
            return first, None
        payload = first.payload
        etag = first.option(ETAG)
        asked = [o for o in options if o[0] not in (OBSERVE, BLOCK1, BLOCK2)]
        try:
            while block2 is not None and _more(block2):
                value = int.from_bytes(block2, "big")
                size = 1 << ((value & 7) + 4)
                if len(payload) % size:
                    raise ValueError("block sizes do not add up")
                ask = sorted([*asked, (BLOCK2, uint((len(payload) // size) << 4 | (value & 7)))], key=_number)
                response, problem = await self.exchange(code, ask, b"", con)
                if response is None:
                    return None, problem
                block2 = response.option(BLOCK2)
                if block2 is None:  # the target gave up the block-wise transfer: its answer as it is
                    return response, None
                number = int.from_bytes(block2, "big") >> 4
                if response.option(ETAG) != etag or number != len(payload) // size:
                    raise ValueError("the resource changed during a block-wise transfer")
                payload += response.payload
        except ValueError as exc:
            return None, (_BAD_GATEWAY, f"bad answer from the target: {exc}")
        options_whole = [o for o in first.options if o[0] != BLOCK2]
        return Datagram(first.mtype, first.code, first.mid, first.token, options_whole, payload), None

    # -- observations ------------------------------------------------------------------------------------
    def observe(self, code: int, options: Options, con: bool, on_message: Done) -> UpstreamObservation:
        """Registers an observation (``options`` without Observe: it is added)."""
        registration = sorted([*(o for o in options if o[0] != OBSERVE), (OBSERVE, b"")], key=_number)
        observation = UpstreamObservation(self, code, registration, on_message)
        self.send(code, registration, b"", con, on_message, observer=observation)
        return observation

    # -- the socket --------------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_when_open(
        self,
        code: int,
        options: Options,
        payload: bytes,
        con: bool,
        done: Done,
        observer: UpstreamObservation | None,
    ) -> None:
        try:
            await self._open()
        except OSError as exc:
            done(None, (_BAD_GATEWAY, f"target unresolvable: {exc}"))
            return
        if self.closed:
            done(None, (_SERVICE_UNAVAILABLE, "server shutting down"))
            return
        if observer is not None and observer.cancelled:
            return
        self.send(code, options, payload, con, done, observer)

    async def _open(self) -> asyncio.DatagramTransport:
        if self.transport is not None:
            return self.transport
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._create())
        try:
            return await asyncio.shield(self._opening)
        except OSError:
            self._opening = None  # try again with the next request
            raise

    async def _create(self) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), remote_addr=self.target)
        if self.closed:
            transport.close()
            raise OSError("listener stopping")
        self.transport = transport
        return transport

    def _tick(self, pending: _Pending) -> None:
        if self.by_token.get(pending.token) is not pending:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= pending.deadline:
            why = f"no answer from the target in {self.timeout:g} s"
            self._finish(pending, None, (_GATEWAY_TIMEOUT, why))
            return
        if not pending.acked:
            if pending.tries >= MAX_RETRANSMIT:
                self._finish(pending, None, (_GATEWAY_TIMEOUT, "the target did not acknowledge"))
                return
            pending.tries += 1
            pending.wait *= 2
            if self.transport is not None:
                self.transport.sendto(pending.out)
            pending.timer = loop.call_at(min(now + pending.wait, pending.deadline), self._tick, pending)
        else:
            pending.timer = loop.call_at(pending.deadline, self._tick, pending)

    def forget(self, pending: _Pending) -> None:
        self.by_token.pop(pending.token, None)
        if self.by_mid.get(pending.mid) is pending:
            del self.by_mid[pending.mid]
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None

    def _finish(self, pending: _Pending, response: Datagram | None, problem: Problem | None) -> None:
        observer = pending.observer
        if response is not None and observer is not None and not observer.cancelled:
            # An observation: its token stays; no deadline once the target answered.
            if self.by_mid.get(pending.mid) is pending:
                del self.by_mid[pending.mid]
            if pending.timer is not None:
                pending.timer.cancel()
                pending.timer = None
            if response.option(OBSERVE) is not None and response.code < 0x80:
                observer.registered = True
            else:
                self.by_token.pop(pending.token, None)  # the observation is over (or never began)
        else:
            self.forget(pending)
        try:
            pending.done(response, problem)
        except Exception as exc:  # a bug must cost this request, never the socket
            self.log("error", "listener {!r}: relaying an answer failed: {!r}", self.name, exc)

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
        if msg.code < 64:
            return  # a request or a ping: this socket serves nobody
        pending = self.by_token.get(msg.token)
        if pending is None and msg.option(OBSERVE) is not None:
            if self.transport is not None:  # a notification nobody wants any more (RFC 7641 3.6)
                self.transport.sendto(encode(RST, 0, msg.mid))
            return
        if mtype == CON and self.transport is not None:
            # acknowledged even when no longer wanted (a retransmission, or after the 5.04)
            self.transport.sendto(encode(ACK, 0, msg.mid))
        if pending is not None:
            self._finish(pending, msg, None)

    def target_error(self, exc: Exception) -> None:
        """An ICMP error on the connected socket (port or host unreachable): every request in flight to
        the target, and every observation, fails with 5.02."""
        reason = f"target unreachable: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        for pending in list(self.by_token.values()):
            self.forget(pending)
            self._finish(pending, None, (_BAD_GATEWAY, reason))

    def close(self) -> None:
        """The listener stops: requests in flight get 5.03, the socket is closed."""
        self.closed = True
        for pending in list(self.by_token.values()):
            self.forget(pending)
            self._finish(pending, None, (_SERVICE_UNAVAILABLE, "server shutting down"))
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _more(value: bytes) -> bool:
    return bool(int.from_bytes(value, "big") & 8)


def _number(option: tuple[int, bytes]) -> int:
    return option[0]
