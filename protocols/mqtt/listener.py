"""The ``mqtt`` listener actor: accepts device connections and pairs each with a client session actor and
an upstream session actor."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, cast

import gevent
import pykka
from gevent.server import StreamServer
from loguru import logger

from ferryman.actors.contracts import Refusal, RefusalCode
from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.actors.session import ActorSessionControl, Call
from ferryman.protocols.tls.server import NO_PEER, TlsRefused, TlsTerminator

from .proxy import MqttConnection
from .refusals import connack_code
from .session import MqttClientSession, MqttUpstreamSession

__all__ = ["ListenerContext", "MqttListener"]


@dataclass
class ListenerContext:
    """What every connection of one listener shares."""

    name: str
    settings: Any  # ferryman.config.ListenerSettings
    chain: HandlerChain
    metrics: Metrics
    target_host: str
    target_port: int

    @property
    def target_label(self) -> str:
        return f"{self.target_host}:{self.target_port}"


class MqttListener(pykka.ThreadingActor):
    """One ``[[listener]]`` with ``protocol = "mqtt"`` over plain TCP."""

    @classmethod
    def validate_settings(cls, settings: Any) -> list[str]:
        """What this listener cannot do with these settings (checked by the Gateway and `ferryman check`)."""
        problems = []
        tls = settings.tls
        if tls is not None and "ocsp" in tls.verify:
            problems.append("OCSP checks (tls.verify = ocsp) are not available in this version yet")
        if tls is not None and "crl" in tls.verify and not tls.crl_file:
            problems.append("CRL checks need tls.crl_file in this version (distribution points come later)")
        scheme = settings.parsed_target.scheme
        if scheme != "tcp":
            problems.append(f"target scheme {scheme!r} is not available yet (use tcp://)")
        return problems

    def __init__(self, settings: Any, chain: HandlerChain, metrics: Metrics) -> None:
        super().__init__()
        target = settings.parsed_target
        self.ctx = ListenerContext(settings.name, settings, chain, metrics, target.host, target.port)
        self.connections: set[MqttConnection] = set()
        self.per_ip: dict[str, int] = {}
        self._open = metrics.connections_open.labels(settings.name)
        self._total = metrics.connections_total.labels(settings.name)
        self.tls = TlsTerminator(settings.tls) if settings.tls is not None else None
        self.server = StreamServer((settings.host, settings.port), self._handle)
        self.server.init_socket()
        self.address: tuple[str, int] = self.server.address[:2]

    def on_start(self) -> None:
        self.server.start()
        logger.info(
            "listener {!r}: mqtt on {}:{} -> {}", self.ctx.name, *self.address, self.ctx.settings.target
        )

    def bound_address(self) -> tuple[str, int]:
        return self.address

    def stop_accepting(self) -> None:
        if not self.server.closed:
            self.server.close()

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
    def _over_limit(self, ip: str) -> str:
        s = self.ctx.settings
        if s.max_connections and len(self.connections) >= s.max_connections:
            return f"listener at max_connections ({s.max_connections})"
        if s.max_connections_per_ip and self.per_ip.get(ip, 0) >= s.max_connections_per_ip:
            return f"{ip} at max_connections_per_ip ({s.max_connections_per_ip})"
        return ""

    def _refuse_over_limit(self, sock: socket.socket, addr: tuple[str, int], why: str) -> None:
        """Answer the CONNECT (if it comes quickly) with CONNACK 3 / 0x97 quota exceeded, then close. No
        session actors are made for it."""
        self.ctx.metrics.refusals.labels(self.ctx.name, "connection_limit").inc()
        logger.warning("refusing {}:{}: {}", addr[0], addr[1], why)
        conn = MqttConnection(self.ctx, sock, addr)
        try:
            if conn.read_connect(timeout=min(2.0, self.ctx.settings.connect_timeout)) is not None:
                conn.refuse_connect(connack_code(RefusalCode.QUOTA_EXCEEDED, conn.version), why, "")
        except Exception:  # whatever it sent, it is refused
            pass
        finally:
            conn.close(why)

    def _handle(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = NO_PEER
        if self.tls is not None:
            try:
                sock, peer = self.tls.accept(sock, self.ctx.settings.connect_timeout)
            except TlsRefused as exc:
                self.ctx.metrics.refusals.labels(self.ctx.name, "tls").inc()
                logger.info("TLS handshake with {}:{} failed: {}", addr[0], addr[1], exc)
                return
        if self.ctx.settings.socket_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.ctx.settings.socket_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.ctx.settings.socket_buffer)
        ip = str(addr[0])
        why = self._over_limit(ip)
        if why:
            self._refuse_over_limit(sock, addr, why)
            return
        conn = MqttConnection(self.ctx, sock, addr)
        conn.peer = peer
        client = MqttClientSession.start(conn)
        conn.control = ActorSessionControl(client)
        refs: list[pykka.ActorRef[Any]] = [client]
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
            for ref in refs:
                ref.stop(block=False)

        conn.on_close.append(finished)
        try:
            rest = conn.establish(lambda: self._dial(conn, refs))
            if rest is None:
                return
            refs[1].tell(Call("start_downlink"))
            conn.uplink(rest)
        except Exception as exc:  # a bug must cost one connection, never the listener
            logger.opt(exception=exc).error("connection {}:{} failed", *addr)
        finally:
            conn.close(conn.close_reason or "ended")

    def _dial(self, conn: MqttConnection, refs: list[pykka.ActorRef[Any]]) -> socket.socket:
        upstream = MqttUpstreamSession.start(conn)
        refs.append(upstream)
        timeout = self.ctx.settings.connect_timeout
        try:
            sock = cast(
                socket.socket,
                upstream.ask(
                    Call("dial", (self.ctx.target_host, self.ctx.target_port, timeout)), timeout=timeout + 1
                ),
            )
        except pykka.Timeout as exc:
            raise OSError(f"dial timed out after {timeout}s") from exc
        return sock
