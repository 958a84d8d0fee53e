"""The ``coap`` listener actor: an aiocoap server (UDP) on the Gateway's one asyncio loop, in front
of a CoAP server (proxy mode, ``target = "coap://..."``: ``proxy.build_site``) or turning requests into
MQTT publishes and Observe into MQTT subscriptions of the bridge (``target = "mqtt"``: ``mqtt_site``).

The actor lives among the greenlets; aiocoap lives on the Gateway's asyncio loop (a lease of
``services.asyncio``, handed over by the Gateway like the bridge's port). The actor only starts and stops
the aiocoap context (``AsyncioHost.run``) and hands the bridge's port over (``call_soon``); requests never
pass through the actor.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import aiocoap
import pykka
from loguru import logger

from ferryman.actors.contracts import Refusal
from ferryman.actors.errors import GatewayError
from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.actors.services import ListenerServices
from ferryman.protocols.addresses import plain_address, v4_mapped

from .auth import is_authenticated, shrink
from .codec import screen
from .context import CoapContext
from .dtls import dtls_bind, dtls_problems, harden, psk_credentials, psk_problems
from .kind import COAP_KIND
from .publish import PORT, MqttPort

__all__ = ["CoapListener"]

_PROXY_MODULE = "ferryman.protocols.coap.proxy"
_SWEEP_EVERY = 10.0
EMPTY_ACK_DELAY = 1.0  # seconds before a slow answer gets an empty ACK (see _serve)
_AIOCOAP_LOGGER = "ferryman.coap.aiocoap"


def _proxy_available() -> bool:
    try:
        return importlib.util.find_spec(_PROXY_MODULE) is not None
    except ImportError:
        return False


class CoapListener(pykka.ThreadingActor):
    """One ``[[listener]]`` with ``protocol = "coap"``: UDP; or DTLS (``coaps``) with pre-shared keys when it
    has ``[listener.psk]`` (aiocoap's tinydtls_server, see dtls.py), with certificates when it has
    ``[listener.tls]`` (a DTLS terminator on OpenSSL in front of a plain endpoint, see dtls_cert.py)."""

    kind = COAP_KIND  # its settings keys and checks, for the loader (ferryman/wiring.py)

    @classmethod
    def validate_settings(cls, settings: Any) -> list[str]:
        """What this listener cannot do with these settings (checked by the Gateway and `ferryman check`).
        Publish mode also needs ``[bridge.mqtt]``: the settings loader refuses it without."""
        problems: list[str] = []
        target = settings.parsed_target
        if target.scheme not in ("coap", "coaps", "mqtt"):
            problems.append(
                f"target scheme {target.scheme!r}: a coap listener forwards to coap:// (proxy mode) "
                'or publishes to MQTT (target = "mqtt")'
            )
        elif target.scheme == "coaps":
            problems.append("target scheme 'coaps': DTLS towards the target is not available; use coap://")
        elif target.scheme == "coap" and not _proxy_available():
            problems.append("proxy mode (target = coap://...) is not available in this version")
        if settings.tls is not None:
            problems.extend(dtls_problems(settings.tls, settings.psk))
        problems.extend(psk_problems(settings))
        if settings.path_prefix:
            problems.append("path_prefix is for mqtt-ws and http listeners")
        return problems

    def __init__(
        self,
        settings: Any,
        chain: HandlerChain,
        metrics: Metrics,
        services: ListenerServices | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        target = settings.parsed_target
        services = services if services is not None else ListenerServices()
        # The bridge's MQTT port (bridge/coap_mqtt.py), handed over by the Gateway; GatewayError without.
        self.port: MqttPort | None = services.publish_port(PORT, settings.name) if target.is_publish else None
        self.lease = services.asyncio.lease()
        self.host = self.lease.host
        self.dtls = bool(settings.psk)
        self.cert_dtls = settings.tls is not None and not self.dtls
        self.ctx = CoapContext(settings, chain, metrics, self.host, secure=self.dtls or self.cert_dtls)
        self.terminator: Any = None  # dtls_cert.DtlsTerminator of a [listener.tls] listener
        self.site: Any
        if self.port is not None:  # publish mode
            from .mqtt_site import PublishSite

            self.site = PublishSite(self.ctx, self.port)
        else:
            proxy = importlib.import_module(_PROXY_MODULE)
            self.site = proxy.build_site(self.ctx)
        self.context: aiocoap.Context | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        try:
            self.context, self.address = self.host.run(self._serve(), timeout=10)
        except BaseException:
            self.lease.stop()
            raise

    async def _serve(self) -> tuple[aiocoap.Context, tuple[str, int]]:
        bind = (self.settings.host, self.settings.port)
        # aiocoap warns once per unparsable or misfit datagram: garbage would flood the log (and stdlib
        # logging's locks are gevent's in this thread). Errors still show.
        logging.getLogger(_AIOCOAP_LOGGER).setLevel(logging.ERROR)
        # aiocoap answers a CON request it has not answered within EMPTY_ACK_DELAY (0.1 s) with an empty
        # ACK and sends the response later as a separate CON. A client retransmits only after ACK_TIMEOUT
        # (2 to 3 s, RFC 7252 4.8), so waiting up to 1 s costs nothing and keeps slow answers (a proxied
        # block-wise body the target sends in 64 blocks) piggybacked: libcoap's block-wise client cannot
        # go on with a transfer whose first block came as a separate response.
        aiocoap.numbers.constants.TransportTuning.EMPTY_ACK_DELAY = EMPTY_ACK_DELAY
        if self.dtls:
            # coaps: aiocoap's tinydtls_server (pre-shared keys), bound to the listener's one address. The
            # credentials are read per handshake, so loading them right after binding is in time.
            context = await aiocoap.Context.create_server_context(
                self.site,
                bind=dtls_bind(*bind),
                transports=["tinydtls_server"],
                loggername=_AIOCOAP_LOGGER,
            )
            context.server_credentials.load_from_dict(psk_credentials(self.settings.psk))
            if not harden(context, self.ctx):
                await context.shutdown()
                raise GatewayError(f"listener {self.settings.name!r}: aiocoap started no DTLS server")
        elif self.cert_dtls:
            # coaps with certificates: the terminator binds the listener's address; the plain endpoint it
            # feeds is bound to an internal loopback port that serves nothing else.
            context = await aiocoap.Context.create_server_context(
                self.site, bind=("127.0.0.1", 0), transports=["udp6"], loggername=_AIOCOAP_LOGGER
            )
            try:
                self.terminator = await _terminate(context, self.ctx, bind)
            except BaseException:
                await context.shutdown()
                raise
            self._schedule_sweep()
            return context, self.terminator.address
        else:
            context = await aiocoap.Context.create_server_context(
                self.site, bind=bind, transports=["udp6"], loggername=_AIOCOAP_LOGGER
            )
            _guard_decoding(context, self.ctx)
        self._schedule_sweep()
        return context, _bound_address(context, bind)

    def _schedule_sweep(self) -> None:  # asyncio thread
        if self.ctx.stopping:
            return
        self.ctx.auth.sweep()
        if self.terminator is not None:
            self.terminator.sweep()
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_EVERY, self._schedule_sweep)

    def on_start(self) -> None:
        logger.info(
            "listener {!r}: {} on {}:{} -> {}",
            self.settings.name,
            "coaps (DTLS, pre-shared keys)"
            if self.dtls
            else "coaps (DTLS, certificates)"
            if self.cert_dtls
            else "coap",
            *self.address,
            self.settings.target,
        )
        if self.port is not None:
            logger.info("listener {!r}: publishing through the bridge's MQTT session", self.settings.name)

    def bound_address(self) -> tuple[str, int]:
        return self.address

    @classmethod
    def in_every_worker(cls, settings: Any) -> bool:
        """With worker processes: plain CoAP in proxy mode runs in every worker (aiocoap's udp6 transport
        binds with SO_REUSEPORT itself; the kernel keeps each peer on one worker's socket by its address).
        DTLS (whose sessions live in one socket's process) and publish mode (beside the bridge) run in
        worker 0."""
        return not (settings.parsed_target.is_publish or settings.psk or settings.tls is not None)

    def stop_accepting(self) -> None:
        self.ctx.stopping = True  # read in the asyncio thread: new requests get 5.03

    def close_all(self, refusal: Refusal, drain: float = 0.0) -> int:
        """Ends every observation (a last 5.03 notification) and forgets the remembered sessions."""
        if not self.host.running:
            return 0
        try:
            return self.host.run(self._close_all(refusal), timeout=max(drain, 1.0))
        except TimeoutError:
            return 0

    async def _close_all(self, refusal: Refusal) -> int:
        self.ctx.stopping = True
        count = int(getattr(self.site, "observations", 0))
        stop = getattr(self.site, "stop", None)
        if stop is not None:
            stop()
        await asyncio.sleep(0)  # let the observations send their last notification
        self.ctx.auth.close(refusal.reason or "listener stopping")
        return count

    def on_stop(self) -> None:
        self.ctx.stopping = True
        try:
            if self.host.running and self.context is not None:
                self.host.run(self._shutdown(), timeout=5)
        except Exception as exc:
            logger.warning("listener {!r}: aiocoap shutdown: {}", self.settings.name, exc)
        finally:
            self.context = None
            self.lease.stop()

    async def _shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        shutdown = getattr(self.site, "shutdown", None)  # proxy mode: ends its relays, closes its upstream
        stop = getattr(self.site, "stop", None)
        if shutdown is not None:
            await shutdown()
        elif stop is not None:
            stop()
        self.ctx.auth.close("listener stopped")
        if self.terminator is not None:
            self.terminator.close()
        if self.context is not None:
            await self.context.shutdown()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        logger.opt(exception=(exception_type, exception_value, traceback)).error(
            "listener {!r} failed", self.settings.name
        )


def _guard_decoding(context: aiocoap.Context, ctx: CoapContext) -> None:
    """Every datagram passes here first, in the asyncio thread. The site's fast path (``ctx.fast_path``, see
    codec.py) may take it whole; the rest goes to aiocoap.

    aiocoap 0.4.17 lets a datagram whose string option is not UTF-8 raise ``UnicodeDecodeError`` out of
    ``datagram_msg_received`` (it catches ``UnparsableMessage`` only): asyncio logs a traceback per datagram.
    Such datagrams are dropped here, counted in ``ctx.garbage``; dispatch errors are caught inside."""
    for interface in getattr(context, "request_interfaces", ()):
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        received = getattr(message_interface, "datagram_msg_received", None)
        if received is None:
            continue

        def guarded(
            data: bytes,
            ancdata: Any,
            flags: int,
            address: Any,
            received: Any = received,
            mi: Any = message_interface,
        ) -> None:
            transport = mi.transport

            def reply(out: bytes) -> None:
                transport.sendmsg(out, ancdata, 0, address)  # ancdata: the pktinfo we were reached on

            if not _screened(ctx, data, flags, reply):
                return
            fast = ctx.fast_path
            if fast is not None:
                try:
                    if fast(data, address, reply):
                        return
                except Exception as exc:  # a bug must cost this datagram, never the listener
                    ctx.log("error", "coap fast path failed on a datagram from {}: {!r}", address, exc)
                    return
            try:
                received(data, ancdata, flags, address)
            except Exception:
                ctx.garbage += 1

        message_interface.datagram_msg_received = guarded  # type: ignore[union-attr]
        _cap_answers(message_interface)


def _screened(ctx: CoapContext, data: bytes, flags: int, reply: Callable[[bytes], object]) -> bool:
    """True when ``data`` may go on (to a fast path or aiocoap); else it was refused by ``codec.screen``
    (a format error, a bad critical option: an RST, a 4.00 / 4.02 without payload, or nothing) or cut by
    the socket (larger than aiocoap reads: a CON gets an RST)."""
    if flags & socket.MSG_TRUNC:
        ok, answer = False, (bytes((0x70, 0, data[2], data[3])) if data[0] & 0xF0 == 0x40 else None)
    else:
        ok, answer = screen(data, ctx.next_mid)
    if ok:
        return True
    ctx.rejected += 1
    if answer is not None:
        reply(answer)
    return False


def _cap_answers(message_interface: Any) -> None:
    """aiocoap's answers to a peer that did not authenticate (a request refused before or by the
    authentication, or by aiocoap itself) are never larger than the request: UDP sources can be spoofed, so
    a larger answer would make the gateway an amplifier. The diagnostic payload is cut to fit (options go
    too when even they do not fit). Notifications and answers to authenticated requests are left alone."""
    send = message_interface.send

    def capped(message: aiocoap.Message) -> None:
        request = getattr(message, "request", None)
        if request is not None and message.code.is_response() and not is_authenticated(request):
            shrink(message, request)
        send(message)

    message_interface.send = capped


async def _terminate(context: aiocoap.Context, ctx: CoapContext, bind: tuple[str, int]) -> Any:
    """Puts a ``dtls_cert.DtlsTerminator`` on ``bind`` in front of ``context``'s udp6 endpoint (asyncio
    thread); returns it, its bound address in ``.address``.

    Decrypted datagrams enter the endpoint through its ``datagram_msg_received`` with the peer's own
    address (as aiocoap's udp6 writes it: IPv6, IPv4-mapped) and a pktinfo of the public address; the
    endpoint's ``transport`` is wrapped so that its answers go back through the terminator. Datagrams that
    really arrive at the internal socket are dropped: it serves nobody directly."""
    from ferryman.protocols.tls.revocation import RevocationChecker

    from .dtls_cert import DtlsTerminator

    message_interface: Any = None
    for interface in getattr(context, "request_interfaces", ()):
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        if message_interface is not None and hasattr(message_interface, "datagram_msg_received"):
            break
    if message_interface is None:
        raise GatewayError(f"listener {ctx.name!r}: aiocoap started no udp endpoint")
    received = message_interface.datagram_msg_received
    tls = ctx.settings.tls
    revocation = RevocationChecker(tls) if tls.verify and tls.client_ca_file else None
    holder: dict[str, Any] = {}

    def deliver(plain: bytes, sockaddr: tuple[Any, ...]) -> None:
        if not _screened(ctx, plain, 0, lambda out: terminator.send_to(out, _v6(sockaddr))):
            return
        try:
            received(plain, holder["ancdata"], 0, _v6(sockaddr))
        except Exception:
            ctx.garbage += 1  # e.g. a string option that is not UTF-8 (see _guard_decoding)

    terminator = DtlsTerminator(
        tls, deliver, revocation=revocation, in_hub=ctx.host.in_hub, log=ctx.log, name=ctx.name
    )
    loop = asyncio.get_running_loop()
    sock = _udp_socket(*bind)
    await loop.create_datagram_endpoint(lambda: terminator, sock=sock)
    terminator.address = plain_address(sock.getsockname())
    local = v4_mapped(terminator.address[0])
    pktinfo = socket.inet_pton(socket.AF_INET6, local) + struct.pack("I", 0)
    holder["ancdata"] = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)]

    def internal(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        terminator.dropped += 1

    message_interface.datagram_msg_received = internal
    message_interface.transport = _Outbound(message_interface.transport, terminator)
    message_interface.ferryman_dtls = terminator  # auth._dtls_identity asks it for the peer's identity
    return terminator


class _Outbound:
    """aiocoap's udp6 transport, but ``sendmsg`` encrypts to the DTLS peer (dtls_cert.py)."""

    def __init__(self, transport: Any, terminator: Any) -> None:
        self._transport = transport
        self._terminator = terminator

    def sendmsg(self, data: bytes, ancdata: Any = (), flags: int = 0, address: Any = None) -> None:
        if address is not None:
            self._terminator.send_to(data, address)  # no session (any more): dropped, as UDP may

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _v6(sockaddr: tuple[Any, ...]) -> tuple[Any, ...]:
    """A peer address as aiocoap's udp6 has it: ``(IPv6 host, port, flowinfo, scope_id)``."""
    if len(sockaddr) >= 4:
        return tuple(sockaddr[:4])
    host = str(sockaddr[0])
    return (v4_mapped(host), int(sockaddr[1]), 0, 0)


def _udp_socket(host: str, port: int) -> socket.socket:
    """The public UDP socket of a DTLS-with-certificates listener (dual-stack on ``::`` and ``""``)."""
    if host in ("", "::") or ":" in host:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        if host in ("", "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        bind_host = host or "::"
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        bind_host = host
    try:
        sock.setblocking(False)
        sock.bind((bind_host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _bound_address(context: aiocoap.Context, bind: tuple[str, int]) -> tuple[str, int]:
    """The UDP socket's address (the port the OS chose for port 0)."""
    for interface in getattr(context, "request_interfaces", ()):
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        transport = getattr(message_interface, "_transport", None)
        if transport is None:  # tinydtls_server: the socket is its pool's
            transport = getattr(getattr(message_interface, "_pool", None), "_transport", None)
        if transport is None:
            continue
        sockname = transport.get_extra_info("sockname")
        if sockname:
            return plain_address(sockname)
    return bind
