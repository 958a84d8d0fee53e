"""The request core of CoAP proxy mode, shared by its two transports (the datagram path, ``proxy_fast.py``,
and aiocoap's, ``proxy.py``): what a request may do, what of it crosses to the target, and how the
target's answer comes back. The client that carries the requests is ``upstream.UpstreamClient`` (the
listener's only one); block-wise state is ``blockwise.Block2Store``'s.

Which transport serves a request, and why (measured with bench/coap_proxy.py, 64 requests in flight, the
same aiocoap target direct and through the gateway): the datagram path reaches 0.85 of the target's own
rate, aiocoap's path 0.33. So the datagram path serves every request it can (plain GET, POST, PUT,
DELETE) and aiocoap keeps only what needs its server side: Observe (pipes, CON notifications and their
retransmission, RST and ICMP handling), Block1 uploads (its ``Block1Spool``), unusual options and both
DTLS transports.

Authorization, by method: POST / PUT / DELETE / PATCH / iPATCH need ``auth_publish`` on the topic (the
Uri-Path joined by ``/``) with the whole payload, GET / FETCH with Observe = 0 ``auth_subscribe``, a
plain GET / FETCH (and a deregistration) the same subscribe right to read the topic (:func:`read_refusal`).

What is forwarded: the request's code, payload and options, minus what belongs to the hop between the
device and the gateway (the ``auth`` query option, Uri-Host / Uri-Port, Block1 / Block2 / Size1 / Size2,
which are redone on each side, Observe, which the relay sets, No-Response, Request-Tag, Echo). The
target's path prefix (``coap://host:port/prefix``) is put in front of the request's Uri-Path. A NON
request goes on as NON, a CON as CON.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from .auth import CoapListenerState, Principal, refusal_message
from .blockwise import RESPONSE_HOP, as_message
from .codec import URI_PATH, URI_QUERY, Datagram

__all__ = [
    "HOP_OPTIONS",
    "UpstreamError",
    "forwarded_options",
    "path_prefix",
    "read_refusal",
    "relayed_message",
    "unsupported_options",
]


#: Options of the client <-> gateway hop: never forwarded (the ``auth`` Uri-Query is dropped too).
HOP_OPTIONS = frozenset(
    int(n)
    for n in (
        OptionNumber.URI_HOST,
        OptionNumber.URI_PORT,
        OptionNumber.OBSERVE,
        OptionNumber.BLOCK1,
        OptionNumber.BLOCK2,
        OptionNumber.SIZE1,
        OptionNumber.SIZE2,
        OptionNumber.NO_RESPONSE,
        OptionNumber.REQUEST_TAG,
        OptionNumber.ECHO,
    )
)
#: Options a proxy must understand to forward a request (RFC 7252 5.7.1): the unsafe ones it handles.
_KNOWN_UNSAFE = frozenset(
    {
        OptionNumber.URI_HOST,
        OptionNumber.URI_PORT,
        OptionNumber.URI_PATH,
        OptionNumber.URI_QUERY,
        OptionNumber.OBSERVE,
        OptionNumber.BLOCK1,
        OptionNumber.BLOCK2,
        OptionNumber.IF_MATCH,
        OptionNumber.IF_NONE_MATCH,
        OptionNumber.ACCEPT,
        OptionNumber.REQUEST_TAG,
        OptionNumber.ECHO,
        OptionNumber.NO_RESPONSE,
    }
)


class UpstreamError(Exception):
    """The target could not be reached or did not answer: ``code`` is 5.02, 5.03 or 5.04."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def to_message(self) -> aiocoap.Message:
        return aiocoap.Message(code=Code(self.code), payload=self.reason.encode("utf-8")[:128])


def unsupported_options(request: aiocoap.Message) -> list[int]:
    """Unsafe-to-forward options the proxy does not know (answered 4.02 Bad Option)."""
    return [
        int(o.number)
        for o in request.opt.option_list()
        if o.number.is_unsafe() and o.number not in _KNOWN_UNSAFE
    ]


def path_prefix(path: str) -> list[tuple[int, bytes]]:
    """The target's path prefix (``coap://host:port/a/b``) as Uri-Path options."""
    return [(URI_PATH, p.encode()) for p in path.split("/") if p]


def forwarded_options(
    options: Iterable[tuple[int, bytes]], prefix: list[tuple[int, bytes]]
) -> list[tuple[int, bytes]]:
    """The request's options (number order) as the target gets them: the hop's dropped, ``prefix`` before
    the request's own Uri-Path."""
    out: list[tuple[int, bytes]] = []
    for number, value in options:
        if prefix and number >= URI_PATH:
            out.extend(prefix)
            prefix = []
        if number in HOP_OPTIONS:
            continue
        if number == URI_QUERY and value.partition(b"=")[0] == b"auth":
            continue
        out.append((number, value))
    if prefix:
        out.extend(prefix)
    return out


def relayed_message(response: Datagram) -> aiocoap.Message:
    """The target's (whole) response as an answer for aiocoap's server side: code, payload and options but
    those of the target -> gateway hop (Observe, Block1 / Block2, Size1 / Size2)."""
    kept = [o for o in response.options if o[0] not in RESPONSE_HOP]
    return as_message((response.code, kept, response.payload))


def read_refusal(ctx: CoapListenerState, principal: Principal, topic: str) -> aiocoap.Message | None:
    """Reading a topic (GET / FETCH without a registration) needs the right to subscribe to it: None, or
    the refusal (4.01 once revoked, 4.03; counted, the handlers are told nothing)."""
    grant = principal.grant
    if grant is None:
        return refusal_message(Code.UNAUTHORIZED, "revoked")
    if grant.auth_subscribe(topic):
        return None
    ctx.count_refusal("subscribe")
    return refusal_message(Code.FORBIDDEN, f"not allowed: {topic}")
