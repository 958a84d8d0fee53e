"""Observe in CoAP proxy mode: one relay per client observation, each with its own upstream observation.

The relay runs inside the render task of the client's registration (aiocoap drives it from the server
side's pipe). It lives exactly as long as both ends keep the observation, with no idle cut of its own:

- the client deregisters (GET with Observe = 1 on the same token), answers a notification with RST, or
  stops acknowledging CON notifications: aiocoap loses interest in the pipe and cancels the task;
- the target ends it (a notification that is unsuccessful or carries no Observe option): relayed as the
  client's last notification; a target that vanishes ends it with 5.02;
- a handler revokes the credentials (4.01 as the last notification) or the listener stops (5.03).

Whatever ends it, the ``finally`` of :meth:`Relay.run` cancels the upstream observation (and tells the
target at once: GET Observe = 1), releases the session and tells ``on_unsubscribe``.

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
from typing import TYPE_CHECKING, Any

import aiocoap
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import NON
from aiocoap.pipe import Pipe
from loguru import logger

from ferryman.actors.contracts import Refusal, RefusalCode

from .auth import Principal, notify_unsubscribe, refusal_message
from .observers import again_as_con, notify, pipe_ended
from .proxy_upstream import Upstream, UpstreamError, relayed_response

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
        upstream: Upstream,
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

    async def run(self, forwarded: aiocoap.Message) -> None:
        request = self.pipe.request
        handle: Any = None
        registered: tuple[bytes, Any] | None = None  # the upstream observation's token and remote
        self.registry.add(self)
        self.principal.hold(self.revoked)
        try:
            handle = self.upstream.request(forwarded)
            first = await self.upstream.response(handle)
            observation = handle.observation
            if first.opt.observe is not None and first.token is not None and first.remote is not None:
                registered = (first.token, first.remote)
            established = (
                first.opt.observe is not None
                and first.code.is_successful()
                and observation is not None
                and not observation.cancelled
            )
            self._send(await self.fit(request, relayed_response(first)), final=not established)
            if not established:
                return
            try:
                async for notification in observation:
                    final = notification.opt.observe is None or not notification.code.is_successful()
                    self._send(await self.fit(request, relayed_response(notification)), final)
                    if final:
                        return
            except coap_error.Error as exc:
                logger.info("listener {!r}: observation of {} lost: {!r}", self.ctx.name, self.topic, exc)
            self._send(refusal_message(Code.BAD_GATEWAY, "the target ended the observation"), final=True)
        except UpstreamError as exc:
            self._send(exc.to_message(), final=True)
        finally:
            self.ended = True
            if self._check is not None:
                self._check.cancel()
            self.registry.discard(self)
            if handle is not None:
                observation = handle.observation
                if observation is not None and not observation.cancelled:
                    observation.cancel()
                if registered is not None:
                    self.upstream.deregister(*registered, forwarded)
                if not handle.response.done():
                    handle.response.cancel()
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
