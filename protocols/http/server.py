"""The pywsgi server of an ``http`` listener: TLS terminated in each connection's own greenlet through
``TlsTerminator`` (so the verified client certificate reaches the Session), TCP_NODELAY, an idle timeout,
and a record of the open connections for a graceful stop."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer
from loguru import logger

from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.protocols.tls.server import NO_PEER, TlsRefused, TlsTerminator

from .app import CONNECTION_KEY, HttpApp
from .auth import AuthCache
from .headers import RequestHeaders, read_headers

__all__ = ["IDLE_TIMEOUT", "HttpConnection", "HttpServer"]

#: Seconds a keep-alive connection may sit idle (and a single read or write may take) before it is closed.
IDLE_TIMEOUT = 60.0


class HttpConnection(WSGIHandler):  # type: ignore[misc]
    """One client connection (pywsgi's handler lives as long as the keep-alive connection)."""

    auth: AuthCache
    busy = False

    def MessageClass(self, fp: Any, *args: Any) -> RequestHeaders:
        return read_headers(fp)

    def log_request(self) -> None:
        """No access log: formatting it cost more than a tenth of a publish request."""

    def _sendall(self, data: bytes) -> None:
        """pywsgi's, with one ``send`` first: gevent's ``sendall`` asks the kernel for SO_SNDBUF on every
        call, a second system call per response (measured: 3 % of a publish request)."""
        sock = self.socket
        try:
            sent = sock.send(data)
            if sent < len(data):
                sock.sendall(memoryview(data)[sent:])
        except OSError as ex:
            self.status = f"socket error: {ex}"
            code: int = getattr(self, "code", 0) or 0
            if code > 0:
                self.code = -code
            raise
        self.response_length += len(data)

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        env[CONNECTION_KEY] = self
        return env

    def handle_one_response(self) -> None:
        self.busy = True
        try:
            super().handle_one_response()
        finally:
            self.busy = False

    def shutdown(self) -> None:
        """Ends the connection: its greenlet's next (or current) read sees the end of the stream."""
        sock = getattr(self, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _ErrorLog:
    """pywsgi's error log (malformed requests) into loguru, at debug level: client noise, not our errors."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, message: str) -> None:
        if message.strip():
            logger.debug("listener {!r}: {}", self.name, message.strip())

    def flush(self) -> None:
        pass


class HttpServer(WSGIServer):  # type: ignore[misc]
    handler_class = HttpConnection

    def __init__(
        self,
        address: tuple[str, int],
        app: HttpApp,
        chain: HandlerChain,
        metrics: Metrics,
        tls: TlsTerminator | None,
        handshake_timeout: float,
    ) -> None:
        super().__init__(
            address,
            app,
            log=None,
            error_log=_ErrorLog(app.name),
            # SERVER_NAME given: pywsgi would otherwise resolve the listening address's FQDN at start.
            environ={"SERVER_NAME": address[0], "wsgi.url_scheme": "https" if tls else "http"},
        )
        self.app = app
        self.chain = chain
        self.metrics = metrics
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.connections: set[HttpConnection] = set()
        self._open = metrics.connections_open.labels(app.name)
        self._total = metrics.connections_total.labels(app.name)

    def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = NO_PEER
        if self.tls is not None:
            try:
                sock, peer = self.tls.accept(sock, self.handshake_timeout)
            except TlsRefused as exc:
                self.metrics.refusals.labels(self.app.name, "tls").inc()
                logger.info("TLS handshake with {}:{} failed: {}", address[0], address[1], exc)
                return
        sock.settimeout(IDLE_TIMEOUT)
        conn = HttpConnection(sock, address, self)
        conn.auth = AuthCache(self.chain, self.app.name, (str(address[0]), int(address[1])), peer)
        self.connections.add(conn)
        self._open.inc()
        self._total.inc()
        try:
            conn.handle()
        except Exception as exc:  # a bug must cost one connection, never the listener
            logger.opt(exception=exc).error("connection {}:{} failed", address[0], address[1])
        finally:
            self.connections.discard(conn)
            self._open.dec()
            conn.auth.close("ended")

    def close_connections(self, drain: float) -> int:
        """Idle keep-alive connections are ended now; those in the middle of a request get up to ``drain``
        seconds to finish it (their response says ``Connection: close``), then are ended too."""
        conns = list(self.connections)
        self.app.stopping = True
        for conn in conns:
            if not conn.busy:
                conn.shutdown()
        deadline = gevent.get_hub().loop.now() + drain
        while any(c.busy for c in conns) and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.02)
        for conn in conns:
            conn.shutdown()
        return len(conns)
