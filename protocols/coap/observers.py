"""The observations of one ``coap`` listener, in both modes: bounded, and checked for liveness.

- **Bounds.** At most ``max_observations`` observations on the listener (all peers; a registration past
  it is answered 5.03 Service Unavailable with Max-Age) and ``max_observations_per_peer`` of one peer (its
  address and port; 4.29 Too Many Requests). Neither answer carries Observe: the client knows it is not
  registered (RFC 7641 4.1). ``ferryman_coap_observations{listener}`` is the number open now.
- **Liveness** (RFC 7641 4.5). An observation that sent no confirmable notification for
  ``observe_check_interval`` seconds sends its last notification again as CON (the registration's answer
  when nothing came since); a NON observer gets a CON notification at least as often. A peer that answers
  it with RST, or does not acknowledge it (aiocoap gives up after its retransmissions, about 93 s; at once
  when an ICMP error says the port is closed), loses the observation: aiocoap cancels its task, whose
  ``finally`` releases the MQTT subscription (publish mode) or the target's observation (proxy mode).

Used from the asyncio thread only.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

from .auth import CoapListenerState, refusal_message

__all__ = ["ObserverBook", "again_as_con", "notify", "pipe_ended"]

#: Max-Age of the 5.03 answered when the listener holds ``max_observations`` (seconds).
FULL_RETRY = 60


class ObserverBook:
    """How many observations each peer holds, and all together (asyncio thread)."""

    def __init__(self, ctx: CoapListenerState) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.max_total = int(getattr(settings, "max_observations", 4096))
        self.max_per_peer = int(getattr(settings, "max_observations_per_peer", 64))
        self.check_interval = float(getattr(settings, "observe_check_interval", 120.0))
        self.total = 0
        self.by_peer: dict[tuple[str, int], int] = {}
        #: Registrations refused for a bound (diagnostics, tests).
        self.refused = 0
        ctx.host.to_hub(_gauge, ctx, self)

    def admit(self, peer: tuple[str, int]) -> aiocoap.Message | None:
        """Counts a new observation of ``peer``; or the refusal to answer its registration with."""
        if self.total >= self.max_total:
            self.refused += 1
            full = refusal_message(Code.SERVICE_UNAVAILABLE, "too many observations")
            full.opt.max_age = FULL_RETRY
            return full
        held = self.by_peer.get(peer, 0)
        if held >= self.max_per_peer:
            self.refused += 1
            return refusal_message(Code.TOO_MANY_REQUESTS, "too many observations from this peer")
        self.by_peer[peer] = held + 1
        self.total += 1
        return None

    async def hold(self, peer: tuple[str, int], pipe: Any, observe: Callable[[], Awaitable[None]]) -> None:
        """Runs ``observe`` (an observation's whole life) as one admitted observation of ``peer``, or answers
        the registration on ``pipe`` with the refusal when the bounds are reached."""
        full = self.admit(peer)
        if full is not None:
            pipe.add_response(full, is_last=True)
            return
        try:
            await observe()
        finally:
            self.leave(peer)

    def leave(self, peer: tuple[str, int]) -> None:
        """An observation admitted for ``peer`` ended."""
        held = self.by_peer.get(peer, 0)
        if held <= 1:
            self.by_peer.pop(peer, None)
        else:
            self.by_peer[peer] = held - 1
        if held:
            self.total -= 1


def again_as_con(last: aiocoap.Message) -> aiocoap.Message:
    """A fresh notification with what ``last`` (a notification not yet handed to aiocoap, or a copy of
    one) carried, to be sent as CON: the liveness check."""
    again = aiocoap.Message(code=last.code, payload=last.payload, transport_tuning=aiocoap.Reliable())
    again.opt = copy.deepcopy(last.opt)
    return again


def _gauge(ctx: CoapListenerState, book: ObserverBook) -> None:
    """``ferryman_coap_observations{listener}``, read at scrape time (in the hub: prometheus-client's
    locks are gevent's)."""
    gauge: Any = getattr(ctx.metrics, "coap_observations", None)
    if gauge is None:
        return
    gauge.labels(ctx.name).set_function(_reader(book))


def _reader(book: ObserverBook) -> Callable[[], float]:
    return lambda: float(book.total)


def pipe_ended(pipe: Any) -> bool:
    """True once aiocoap's pipe of an observation has ended (its peer reset it, stopped acknowledging it, or
    an ICMP error came): adding a response then raises inside aiocoap 0.4.17. The render task is being
    cancelled at that point; a timer (the liveness check) or a timeout may still run before it is."""
    return getattr(pipe, "_event_callbacks", None) is False


def notify(pipe: Any, response: aiocoap.Message, is_last: bool = False) -> bool:
    """``pipe.add_response``; False (nothing sent) when the pipe ended already or ended while aiocoap sent
    the response: a send that fails at once (an ICMP error already known for the peer) ends the pipe from
    inside ``add_response``, which aiocoap 0.4.17 then trips over (TypeError)."""
    if pipe_ended(pipe):
        return False
    try:
        pipe.add_response(response, is_last=is_last)
    except TypeError:
        if pipe_ended(pipe):
            return False
        raise
    return True
