"""The upstream side of CoAP proxy mode: one aiocoap client context per listener, on the shared asyncio
loop, that carries the forwarded requests to the ``coap://`` target.

What is forwarded: the request's code, payload and options, minus what belongs to the hop between the
device and the gateway (the ``auth`` query option, Uri-Host / Uri-Port, Block1 / Block2 / Size1 / Size2,
which aiocoap redoes on each side, Observe, which the relay sets, No-Response). The target's path prefix
(``coap://host:port/prefix``) is put in front of the request's Uri-Path. A NON request goes on as NON, a
CON as CON. What comes back is the target's response, whole: aiocoap reassembles Block2 from the target
and Block1 towards it (``handle_blockwise=True``).

The target's address is resolved once (``getaddrinfo`` runs in the hub's threadpool: too slow to do per
request) and again after a network error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiocoap
from aiocoap import error as coap_error
from aiocoap.message import Direction, UndecidedRemote
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import NON
from loguru import logger

from .auth import queries_without_auth

__all__ = ["HOP_OPTIONS", "Upstream", "UpstreamError", "forwarded_request", "relayed_response"]


#: Options of the client <-> gateway hop: never forwarded (Uri-Path and Uri-Query are rebuilt).
HOP_OPTIONS = frozenset(
    {
        OptionNumber.URI_HOST,
        OptionNumber.URI_PORT,
        OptionNumber.URI_PATH,
        OptionNumber.URI_QUERY,
        OptionNumber.OBSERVE,
        OptionNumber.BLOCK1,
        OptionNumber.BLOCK2,
        OptionNumber.SIZE1,
        OptionNumber.SIZE2,
        OptionNumber.NO_RESPONSE,
        OptionNumber.REQUEST_TAG,
        OptionNumber.ECHO,
    }
)
#: Options of the target -> gateway hop, dropped from responses before they are relayed.
_RESPONSE_HOP_OPTIONS = (
    OptionNumber.OBSERVE,
    OptionNumber.BLOCK1,
    OptionNumber.BLOCK2,
    OptionNumber.SIZE1,
    OptionNumber.SIZE2,
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
    """The target could not be reached or did not answer: ``code`` is 5.02 or 5.04."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def to_message(self) -> aiocoap.Message:
        return aiocoap.Message(code=self.code, payload=self.reason.encode("utf-8")[:128])


def unsupported_options(request: aiocoap.Message) -> list[int]:
    """Unsafe-to-forward options the proxy does not know (answered 4.02 Bad Option)."""
    return [
        int(o.number)
        for o in request.opt.option_list()
        if o.number.is_unsafe() and o.number not in _KNOWN_UNSAFE
    ]


def forwarded_request(
    request: aiocoap.Message, payload: bytes, prefix: tuple[str, ...], remote: Any, observe: int | None
) -> aiocoap.Message:
    """The request as the target gets it (a new Message: the incoming one is the server side's)."""
    out = aiocoap.Message(code=request.code, payload=payload)
    if request.mtype == NON:
        out.transport_tuning = aiocoap.Unreliable()
    opt = out.opt
    for option in request.opt.option_list():
        if option.number not in HOP_OPTIONS:
            opt.add_option(option)
    opt.uri_path = prefix + tuple(request.opt.uri_path)
    query = request.opt.uri_query
    if query:
        opt.uri_query = queries_without_auth(query)
    if observe is not None:
        opt.observe = observe
    out.remote = remote
    return out


def relayed_response(response: aiocoap.Message) -> aiocoap.Message:
    """The target's response made ready to go back to the client (in place: it is ours alone). Message
    type, message id and token are left to the server side's message layer: a piggybacked ACK when the
    answer is ready in time, else a separate response of the request's own type."""
    response.mtype = None
    response.mid = None
    response.token = None
    response.remote = None
    response.direction = Direction.OUTGOING
    opt = response.opt
    for number in _RESPONSE_HOP_OPTIONS:
        if opt.get_option(number):
            opt.delete_option(number)
    return response


class Upstream:
    """The aiocoap client context towards one target. Asyncio thread only."""

    def __init__(self, host: str, port: int, path: str, timeout: float, name: str) -> None:
        hostinfo = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.origin = UndecidedRemote("coap", hostinfo)
        self.prefix: tuple[str, ...] = tuple(p for p in path.split("/") if p)
        self.timeout = timeout
        self.name = name
        self._context: aiocoap.Context | None = None
        self._starting: asyncio.Future[aiocoap.Context] | None = None
        self._remote: Any = None
        self.closed = False

    async def context(self) -> aiocoap.Context:
        if self._context is not None:
            return self._context
        if self.closed:
            raise UpstreamError(Code.SERVICE_UNAVAILABLE, "listener stopping")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._create())
        return await asyncio.shield(self._starting)

    async def _create(self) -> aiocoap.Context:
        # udp6 only: the other default client transports (tcp, tls, ws, oscore) are of no use for coap://.
        context = await aiocoap.Context.create_client_context(
            loggername=f"coap-proxy-{self.name}", transports=["udp6"]
        )
        self._context = context
        return context

    async def remote(self) -> Any:
        """The target's resolved endpoint (the first call resolves it)."""
        if self._remote is not None:
            return self._remote
        context = await self.context()
        probe = aiocoap.Message(code=Code.GET)
        probe.remote = self.origin
        try:
            await asyncio.wait_for(context.find_remote_and_interface(probe), self.timeout)
        except (TimeoutError, coap_error.Error, OSError, ValueError) as exc:
            raise UpstreamError(Code.BAD_GATEWAY, f"target unresolvable: {exc}") from None
        self._remote = probe.remote
        return self._remote

    def request(self, message: aiocoap.Message) -> Any:
        """Starts ``message`` (its remote set by :meth:`remote`); returns aiocoap's request handle."""
        assert self._context is not None
        return self._context.request(message, handle_blockwise=True)

    async def response(self, handle: Any) -> aiocoap.Message:
        """The (reassembled) response of ``handle``, or :class:`UpstreamError`; the request is given up
        after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(handle.response, self.timeout)
        except TimeoutError:
            raise UpstreamError(
                Code.GATEWAY_TIMEOUT, f"no answer from the target in {self.timeout:g} s"
            ) from None
        except coap_error.TimeoutError:
            raise UpstreamError(Code.GATEWAY_TIMEOUT, "the target did not acknowledge") from None
        except (coap_error.NetworkError, OSError) as exc:
            self._remote = None  # resolve again: the address may have changed
            raise UpstreamError(Code.BAD_GATEWAY, f"target unreachable: {_short(exc)}") from None
        except coap_error.Error as exc:
            raise UpstreamError(Code.BAD_GATEWAY, f"bad answer from the target: {_short(exc)}") from None

    def deregister(self, token: bytes, remote: Any, request: aiocoap.Message) -> None:
        """Tells the target at once that an observation is over: a NON GET with Observe = 1 on the
        observation's token (RFC 7641 3.6). aiocoap's client would otherwise only reset the target's next
        notification but one. Reaches into aiocoap's message layer (there is no public call for it); when
        that is not possible, the passive way still ends it."""
        context = self._context
        if context is None:
            return
        manager = _message_manager(context.request_interfaces)
        if manager is None:
            return
        message = aiocoap.Message(code=Code.GET, payload=b"")
        message.transport_tuning = aiocoap.Unreliable()
        for option in request.opt.option_list():
            if option.number != OptionNumber.OBSERVE:
                message.opt.add_option(option)
        message.opt.observe = 1
        message.token = token
        message.remote = remote
        message.mtype = NON
        try:
            manager.send_message(message, None)
        except Exception as exc:  # the passive way still ends it
            logger.debug("listener {!r}: deregistration not sent: {!r}", self.name, exc)

    async def close(self) -> None:
        self.closed = True
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()


def _message_manager(interfaces: Iterable[Any]) -> Any:
    for interface in interfaces:
        manager = getattr(interface, "token_interface", None)
        if manager is not None and hasattr(manager, "send_message"):
            return manager
    return None


def _short(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
