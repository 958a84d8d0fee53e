"""Observe in CoAP proxy mode: one relay per client observation, each with its own upstream observation.

The relay runs inside the render task of the client's registration (aiocoap drives it from the server
side's pipe). It lives exactly as long as both ends keep the observation, with no idle cut of its own:

- the client deregisters (GET with Observe = 1 on the same token), answers a notification with RST, or
  stops acknowledging CON notifications: aiocoap loses interest in the pipe and cancels the task;
- the target ends it (a notification that is unsuccessful or carries no Observe option): relayed as the
  client's last notification; a target that vanishes ends it with 5.02;
- a handler revokes the credentials (4.01 as the last notification) or the listener stops (5.03).

Whatever ends it, the ``finally`` of :meth:`Relay.run` cancels the upstream observation (and tells the
target at once: GET Observe = 1), releases the session and tells ``on_unsubscribe``. The upstream
observation is the listener's one upstream client's (``upstream.UpstreamClient.observe``); a notification
the target sends in Block2 blocks is fetched whole (``UpstreamClient.complete``) and served to the client
in blocks from the listener's one Block2 store (``blockwise.py``).

Notifications keep the client's message type (CON registration: CON notifications); a NON observer gets
every fifth notification, and one at least every minute (or ``observe_check_interval``), as CON; and an
observation quiet for ``observe_check_interval`` sends its last notification again as CON: so a client
that is gone is noticed (RFC 7641 4.5) and its state freed, the target's observation included
(observers.py).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import NON
from aiocoap.pipe import Pipe

from ferryman.actors.contracts import Refusal, RefusalCode

from .auth import Principal, notify_unsubscribe, refusal_message
from .codec import OBSERVE, Datagram
from .observers import again_as_con, notify, pipe_ended
from .proxy_core import UpstreamError, relayed_message
from .upstream import Problem, UpstreamClient

if TYPE_CHECKING:
    from .context import CoapContext

__all__ = ["Relay"]

#: Observe values sent to clients: increasing across all relays (a re-registration on the same token
#: never looks older to the client, RFC 7641 3.4).
_sequence = itertools.count(int(time.time()) & 0xFFFF)
_CON_EVERY = 5
_CON_INTERVAL = 60.0

Fit = Callable[[aiocoap.Message, aiocoap.Message], Awaitable[aiocoap.Message]]


class Relay:
    """One client observation and its upstream twin (asyncio thread)."""

    def __init__(
        self,
        ctx: CoapContext,
        upstream: UpstreamClient,
        pipe: Pipe,
        principal: Principal,
        topic: str,
        fit: Fit,
        registry: set[Relay],
    ) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.pipe = pipe
        self.principal = principal
        self.topic = topic
        self.fit = fit  # fits a response to the client's block size (Block2)
        self.registry = registry
        self.non = pipe.request.mtype == NON
        self.sent = 0
        self.last_con = time.monotonic()
        self.ended = False
        self.interval = ctx.observers.check_interval
        self.last: aiocoap.Message | None = None  # the last notification, as handed to aiocoap
        self._check: asyncio.TimerHandle | None = None

    async def run(self, code: int, options: list[tuple[int, bytes]], con: bool) -> None:
        """The relay's whole life: registers ``options`` (forwarded, without Observe) with the target."""
        request = self.pipe.request
        queue: asyncio.Queue[tuple[Datagram | None, Problem | None]] = asyncio.Queue()
        observation = None
        self.registry.add(self)
        self.principal.hold(self.revoked)
        try:
            observation = self.upstream.observe(code, options, con, lambda m, p: queue.put_nowait((m, p)))
            first, problem = await queue.get()
            if first is not None:
                established = first.option(OBSERVE) is not None and _successful(first.code)
                first, problem = await self.upstream.complete(code, options, con, first)
            if first is None:
                assert problem is not None
                self._send(UpstreamError(*problem).to_message(), final=True)
                return
            self._send(await self.fit(request, relayed_message(first)), final=not established)
            if not established:
                return
            while True:
                note, problem = await queue.get()
                if note is None:
                    self.ctx.log(
                        "INFO",
                        "listener {!r}: observation of {} lost: {}",
                        self.ctx.name,
                        self.topic,
                        problem,
                    )
                    break
                final = note.option(OBSERVE) is None or not _successful(note.code)
                note, problem = await self.upstream.complete(code, options, con, note)
                if note is None:
                    assert problem is not None
                    self._send(UpstreamError(*problem).to_message(), final=True)
                    return
                self._send(await self.fit(request, relayed_message(note)), final)
                if final:
                    return
            self._send(refusal_message(Code.BAD_GATEWAY, "the target ended the observation"), final=True)
        finally:
            self.ended = True
            if self._check is not None:
                self._check.cancel()
            self.registry.discard(self)
            if observation is not None:
                observation.cancel()  # tells the target at once when it holds the observation
            self.principal.release(self.revoked)
            notify_unsubscribe(self.ctx, self.principal, self.topic)

    def _send(self, response: aiocoap.Message, final: bool) -> None:
        if self.ended or pipe_ended(self.pipe):
            return
        if final:
            self.ended = True
        else:
            self.last = again_as_con(response)  # a copy: aiocoap changes what it sends
            response.opt.observe = next(_sequence) & 0xFFFFFF
            now = time.monotonic()
            if self.non:
                self.sent += 1
                if self.sent % _CON_EVERY == 0 or now - self.last_con >= min(_CON_INTERVAL, self.interval):
                    response.transport_tuning = aiocoap.Reliable()
                    self.last_con = now
            else:
                self.last_con = now  # every notification of a CON registration is CON
            self._arm()
        notify(self.pipe, response, is_last=final)

    def _arm(self) -> None:
        """(Re)schedules the liveness check ``interval`` after the last CON notification."""
        if self._check is not None:
            self._check.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.last_con + self.interval - time.monotonic())
        self._check = loop.call_later(delay, self._liveness)

    def _liveness(self) -> None:
        """Quiet for the interval: the last notification again, as CON (RFC 7641 4.5). An RST or no ACK
        ends the client's observation (aiocoap cancels the render task; its ``finally`` cleans up)."""
        self._check = None
        if self.ended or self.last is None or pipe_ended(self.pipe):
            return
        again = again_as_con(self.last)
        self.last_con = time.monotonic()
        again.opt.observe = next(_sequence) & 0xFFFFFF
        self._arm()
        notify(self.pipe, again)

    def end(self, response: aiocoap.Message) -> None:
        """Ends the client's observation with ``response`` (unsuccessful); the render task is then
        cancelled by aiocoap and its ``finally`` cleans up."""
        self._send(response, final=True)

    def revoked(self, refusal: Refusal) -> None:
        code = Code.SERVICE_UNAVAILABLE if refusal.code != RefusalCode.NOT_AUTHORIZED else Code.UNAUTHORIZED
        if refusal.code in (RefusalCode.BAD_CREDENTIALS, RefusalCode.BANNED):
            code = Code.UNAUTHORIZED
        self.end(refusal_message(code, refusal.reason or "revoked"))


def _successful(code: int) -> bool:
    return code >> 5 == 2
