"""MQTT listener actors: accept device connections and pair each with a device actor and an upstream
actor (connection_actors.py) around its ``ProxiedConnection`` (connection.py).

``MqttServing`` is the per-connection flow every MQTT transport shares (limits, session actors, metrics,
dialing the target, shutdown); a transport subclass only accepts connections and hands each one to
``serve`` as a byte stream: ``MqttListener`` here (TCP, TLS, mTLS), ``MqttWsListener`` in
``protocols/websocket`` (MQTT over WebSocket)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
import pykka
from gevent.server import StreamServer
from loguru import logger

from ferryman.actors.contracts import Refusal, RefusalCode
from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.actors.services import ListenerServices
from ferryman.actors.session import ActorSessionControl
from ferryman.protocols.accept import ExhaustionBackoff
from ferryman.protocols.addresses import plain_address
from ferryman.protocols.proxy_protocol import (
    ProxyHeaderError,
    TrustedProxies,
    encode_v1,
    encode_v2,
    real_addresses,
)
from ferryman.protocols.tls import client as tls_client
from ferryman.protocols.tls.server import NO_PEER, PeerCertificate, TlsRefused, TlsTerminator

from .connection import ProxiedConnection
from .connection_actors import MqttDeviceActor, MqttUpstreamActor
from .context import Dialer, ListenerContext, Stream
from .kind import MQTT_KIND, PARK_IDLE_AFTER
from .parking import sweep
from .refusals import connack_code

__all__ = [
    "AcceptServer",
    "Dialer",
    "ListenerContext",
    "MqttListener",
    "MqttServing",
    "socket_dialer",
]


def socket_dialer(
    host: str, port: int, tls: ssl.SSLContext | None, server_name: str = "", header: bytes = b""
) -> Dialer:
    """A ``tcp://`` (``tls`` None) or ``tls://`` target: the MQTT bytes go on the socket as they are.
    ``header``: a PROXY protocol header sent first, before the TLS handshake (``target_proxy_protocol``),
    as a load balancer would."""

    def dial(timeout: float) -> Stream:
        return tls_client.dial(host, port, timeout, tls, server_name, header)

    return dial


class AcceptServer(ExhaustionBackoff, StreamServer):  # type: ignore[misc]  # gevent is untyped
    """The MQTT listener's ``StreamServer``, with ``ExhaustionBackoff``. Its handler owns each accepted
    socket and closes it: a connection whose pumps park (parking.py) outlives the handler's greenlet, so
    the server must not close the socket when that greenlet ends, as ``StreamServer`` does."""

    def __init__(self, listener: Any, handle: Any, name: str = "") -> None:
        super().__init__(listener, handle)
        self.label = name

    def do_close(self, *args: Any) -> None:
        pass  # the handler closes its socket (class docstring)


class MqttServing(pykka.ThreadingActor):
    """The transport-independent half of an MQTT listener. Subclasses bind their server in ``__init__``
    (after calling this one), start it in ``on_start`` and close it in ``stop_accepting``."""

    #: Session.protocol of its connections, and the name in log lines.
    PROTOCOL: ClassVar[str] = "mqtt"
    #: Target schemes this listener can dial.
    SCHEMES: ClassVar[tuple[str, ...]] = ("tcp", "tls")

    @classmethod
    def validate_settings(cls, settings: Any) -> list[str]:
        """What this listener cannot do with these settings (checked by the Gateway and `ferryman check`)."""
        problems = []
        tls = settings.tls
        if tls is not None and tls.verify and not tls.client_ca_file:
            problems.append("revocation checks (tls.verify) need tls.client_ca_file (mTLS)")
        scheme = settings.parsed_target.scheme
        if scheme not in cls.SCHEMES:
            wanted = ", ".join(f"{s}://" for s in cls.SCHEMES)
            problems.append(f"target scheme {scheme!r} is not available for {cls.PROTOCOL} (use {wanted})")
        return problems

    def __init__(self, settings: Any, chain: HandlerChain, metrics: Metrics) -> None:
        super().__init__()
        target = settings.parsed_target
        self.ctx = ListenerContext(
            settings.name,
            settings,
            chain,
            metrics,
            target.host,
            target.port,
            self.make_dialer(settings),
            self.PROTOCOL,
        )
        self.connections: set[ProxiedConnection] = set()
        self.per_ip: dict[str, int] = {}
        self._open = metrics.connections_open.labels(settings.name)
        self._total = metrics.connections_total.labels(settings.name)
        self.tls = TlsTerminator(settings.tls) if settings.tls is not None else None
        #: proxy_protocol = true: the load balancers a PROXY header is taken from; None: no header expected
        self.trusted = TrustedProxies(settings.trusted_proxies) if settings.proxy_protocol else None
        # target_proxy_protocol (tcp:// and tls:// targets): the header's version, 0 for none, and the
        # target's TLS context for the per-connection dialers, made once
        self._proxy_header_version = (
            int(settings.target_proxy_protocol) if target.scheme in ("tcp", "tls") else 0
        )
        self._proxy_target_tls = (
            self.target_context(settings) if self._proxy_header_version and target.scheme == "tls" else None
        )
        self.address: tuple[str, int] = ("", 0)

    @classmethod
    def target_context(cls, settings: Any) -> ssl.SSLContext | None:
        """The client TLS context of a tls:// or wss:// target, made once per listener; None for plain."""
        if settings.parsed_target.scheme in ("tls", "wss"):
            return tls_client.client_context(settings.target_tls)
        return None

    @classmethod
    def make_dialer(cls, settings: Any) -> Dialer:
        target = settings.parsed_target
        server_name = settings.target_tls.server_name if settings.target_tls is not None else ""
        return socket_dialer(target.host, target.port, cls.target_context(settings), server_name)

    def bound_address(self) -> tuple[str, int]:
        return self.address

    @classmethod
    def in_every_worker(cls, settings: Any) -> bool:
        """With worker processes, every worker runs this listener (its own SO_REUSEPORT socket)."""
        return True

    def stop_accepting(self) -> None:
        raise NotImplementedError

    def close_all(self, refusal: Refusal, drain: float = 0.0) -> int:
        """Close every open connection (MQTT 5 clients get a DISCONNECT with the refusal's code). With
        ``drain``, writes under way may finish first (all connections together wait at most that long)."""
        conns = list(self.connections)
        jobs = [gevent.spawn(conn.kick_refusal, refusal, drain) for conn in conns]
        gevent.joinall(jobs, timeout=drain + 1 if drain else None)
        return len(conns)

    def on_stop(self) -> None:
        self.stop_accepting()
        self.close_all(Refusal(RefusalCode.SERVER_SHUTTING_DOWN, "gateway shutting down"))

    # -- per connection (runs in the server's handler greenlet) ---------------------------------------
    def tune_socket(self, sock: socket.socket) -> None:
        """TCP_NODELAY and the ``socket_buffer`` sizes of a freshly accepted device socket."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ctx.settings.socket_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.ctx.settings.socket_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.ctx.settings.socket_buffer)

    def proxied_peer(
        self, sock: socket.socket, addr: tuple[str, int]
    ) -> tuple[tuple[str, int], tuple[str, int] | None] | None:
        """``proxy_protocol = true``: the client's address from the PROXY header a trusted load balancer put
        first on ``sock`` (the balancer's own for a LOCAL health check), and the address the client
        connected to at the balancer (None when the header had none); None when the peer is not trusted or
        the header is missing or bad (logged and counted, the socket closed without a byte: the peer is a
        load balancer). Without ``proxy_protocol``: ``addr`` and None. Read before any TLS handshake."""
        if self.trusted is None:
            return addr, None
        try:
            return real_addresses(sock, plain_address(addr), self.trusted, self.ctx.settings.connect_timeout)
        except ProxyHeaderError as exc:
            self.ctx.metrics.refusals.labels(self.ctx.name, "proxy_protocol").inc()
            logger.warning("refusing {}:{}: PROXY protocol: {}", addr[0], addr[1], exc)
            sock.close()
            return None

    def accept_tls(
        self, sock: socket.socket, addr: tuple[str, int]
    ) -> tuple[socket.socket, PeerCertificate] | None:
        """The TLS handshake of a listener with ``[listener.tls]`` (in the connection's greenlet); None when
        it failed (logged and counted, the socket closed). Plain listeners get the socket back."""
        if self.tls is None:
            return sock, NO_PEER
        try:
            return self.tls.accept(sock, self.ctx.settings.connect_timeout)
        except TlsRefused as exc:
            self.ctx.metrics.refusals.labels(self.ctx.name, "tls").inc()
            logger.info("TLS handshake with {}:{} failed: {}", addr[0], addr[1], exc)
            return None

    def _over_limit(self, ip: str) -> str:
        s = self.ctx.settings
        if s.max_connections and len(self.connections) >= s.max_connections:
            return f"listener at max_connections ({s.max_connections})"
        if s.max_connections_per_ip and self.per_ip.get(ip, 0) >= s.max_connections_per_ip:
            return f"{ip} at max_connections_per_ip ({s.max_connections_per_ip})"
        return ""

    def _refuse_over_limit(self, stream: Stream, addr: tuple[str, int], why: str) -> None:
        """Answer the CONNECT (if it comes quickly) with CONNACK 3 / 0x97 quota exceeded, then close. No
        session actors are made for it."""
        self.ctx.metrics.refusals.labels(self.ctx.name, "connection_limit").inc()
        logger.warning("refusing {}:{}: {}", addr[0], addr[1], why)
        conn = ProxiedConnection(self.ctx, stream, addr)
        try:
            if conn.read_connect(timeout=min(2.0, self.ctx.settings.connect_timeout)) is not None:
                conn.refuse_connect(connack_code(RefusalCode.QUOTA_EXCEEDED, conn.version), why, "")
        except Exception:  # whatever it sent, it is refused
            pass
        finally:
            conn.close(why)

    def serve(
        self,
        stream: Stream,
        addr: tuple[str, int],
        peer: PeerCertificate = NO_PEER,
        destination: tuple[str, int] | None = None,
    ) -> None:
        """Proxy one device connection until it ends: limits, CONNECT, authorization, the upstream, both
        pumps. Runs in the connection's own greenlet; returns when the connection is closed.

        The connect path is the cost of a reconnect storm (bench/mqtt_connect_rate.py), so it asks no
        actor: the CONNECT is read and decided, the target dialed and the CONNECT sent in this greenlet;
        the device actor exists from the start (it takes grant changes and disconnect orders from the
        handlers at once), the upstream actor from the moment the upstream socket carries the session.
        Both stop themselves when the connection closes. ``destination``: the address the client connected
        to at a load balancer (its PROXY header), passed on in the PROXY header this listener sends."""
        ip = str(addr[0])
        why = self._over_limit(ip)
        if why:
            self._refuse_over_limit(stream, addr, why)
            return
        conn = ProxiedConnection(self.ctx, stream, addr)
        conn.peer = peer
        conn.destination = destination
        conn.control = ActorSessionControl(MqttDeviceActor.start(conn))
        self.connections.add(conn)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self._open.inc()
        self._total.inc()

        def finished(reason: str) -> None:
            self.connections.discard(conn)
            left = self.per_ip.pop(ip, 1) - 1
            if left:
                self.per_ip[ip] = left
            self._open.dec()

        conn.on_close.append(finished)
        try:
            rest = conn.establish(self._dialer(conn))
        except Exception as exc:  # a bug must cost one connection, never the listener
            logger.opt(exception=exc).error("connection {}:{} failed", *addr)
            rest = None
        if rest is None:
            conn.close(conn.close_reason or "ended")
            return
        MqttUpstreamActor.start(conn)  # starts the downlink pump
        conn.run_uplink(rest)  # until the connection ends, or its uplink parks (parking.py)

    def _dialer(self, conn: ProxiedConnection) -> Callable[[], Stream]:
        """The connection's dial: the listener's dialer, or one that sends the device's address in a PROXY
        header first (``target_proxy_protocol = 1 | 2`` with a ``tcp://`` / ``tls://`` target)."""
        timeout = self.ctx.settings.connect_timeout
        dial = self.ctx.dial
        if self._proxy_header_version:
            dial = self._proxy_header_dialer(conn)
        return lambda: dial(timeout)

    def _proxy_header_dialer(self, conn: ProxiedConnection) -> Dialer:
        s = self.ctx.settings
        target = s.parsed_target
        destination = conn.destination  # what the client connected to at a balancer in front, if any
        local = getattr(conn.device, "getsockname", None)
        try:
            if destination is None and local is not None:
                destination = plain_address(local())
        except (OSError, IndexError, TypeError):
            destination = None
        encode = encode_v1 if self._proxy_header_version == 1 else encode_v2
        header = encode(conn.addr, destination or (s.host or "0.0.0.0", s.port))
        server_name = s.target_tls.server_name if s.target_tls is not None else ""
        return socket_dialer(target.host, target.port, self._proxy_target_tls, server_name, header)


class MqttListener(MqttServing):
    """One ``[[listener]]`` with ``protocol = "mqtt"``: plain TCP, or TLS / mTLS with ``[listener.tls]``;
    the target is ``tcp://`` or ``tls://``."""

    kind = MQTT_KIND  # its settings keys and checks, for the loader (ferryman/wiring.py)

    def __init__(
        self,
        settings: Any,
        chain: HandlerChain,
        metrics: Metrics,
        services: ListenerServices | None = None,
    ) -> None:
        super().__init__(settings, chain, metrics)
        self.server = AcceptServer((settings.host, settings.port), self._handle, settings.name)
        self._sweep: gevent.Greenlet | None = None  # parks idle connections' pumps (parking.py)
        self.server.reuse_port = services is not None and services.reuse_port  # one socket per worker
        self.server.init_socket()
        self.address = self.server.address[:2]

    def on_start(self) -> None:
        self.server.start()
        park_after = float(self.ctx.settings.options.get("park_idle_after", PARK_IDLE_AFTER))
        if park_after > 0:
            self._sweep = gevent.spawn(sweep, lambda: self.connections, park_after)
        logger.info(
            "listener {!r}: mqtt on {}:{} -> {}", self.ctx.name, *self.address, self.ctx.settings.target
        )

    def stop_accepting(self) -> None:
        if not self.server.closed:
            self.server.close()
        if self._sweep is not None:
            self._sweep.kill(block=False)
            self._sweep = None

    def _handle(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        """One accepted socket, closed here on every path but a parked connection's (``AcceptServer``)."""
        try:
            self.tune_socket(sock)
            peer = self.proxied_peer(sock, addr)  # PROXY protocol: before the TLS ClientHello
            if peer is None:
                return
            addr, destination = peer
            accepted = self.accept_tls(sock, addr)
            if accepted is None:
                return
        except BaseException:
            sock.close()
            raise
        self.serve(accepted[0], addr, accepted[1], destination)
