"""The ``mqtt-ws`` listener: MQTT over WebSocket, served by gevent-websocket's handler on gevent pywsgi.

pywsgi parses the HTTP upgrade request and gevent-websocket answers the handshake; this module decides
first whether to accept it (path, Origin, subprotocol). After the 101 the connection is a
:class:`WebSocketStream` handed to the very same per-connection flow as the TCP listener
(``MqttServing.serve``): limits, session actors, authorization, metrics, keepalive and shutdown are shared.
"""

from __future__ import annotations

import socket
from typing import Any, ClassVar

from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler
from loguru import logger

from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.protocols.mqtt.listener import Dialer, MqttServing
from ferryman.protocols.mqtt.proxy import Stream
from ferryman.protocols.tls.server import NO_PEER, PeerCertificate

from .client import dial_websocket
from .stream import WebSocketStream

__all__ = ["SUBPROTOCOLS", "MqttWsListener", "choose_subprotocol"]

#: The subprotocols MQTT over WebSocket is offered under: "mqtt" (MQTT 3.1.1 and 5.0, MQTT-6.0.0-3/4) and
#: "mqttv3.1" (older 3.1 clients).
SUBPROTOCOLS = ("mqtt", "mqttv3.1")
NO_SUBPROTOCOL = "offer Sec-WebSocket-Protocol mqtt or mqttv3.1\n"


def choose_subprotocol(offered: str) -> str:
    """The first of the client's offers (a comma-separated header value) that MQTT speaks, or ""."""
    for token in offered.split(","):
        token = token.strip()
        if token in SUBPROTOCOLS:
            return token
    return ""


class _LogWriter:
    """pywsgi's error log, into loguru (its own writes to stderr would look like crashes)."""

    def write(self, text: str) -> None:
        if text.strip():
            logger.warning("mqtt-ws: {}", text.rstrip())

    def flush(self) -> None:
        pass


def _never_called(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """pywsgi wants an application; ``_Handler.run_application`` answers every request itself."""
    start_response("500 Internal Server Error", [])
    return [b""]


class _Chosen:
    """Stands in for the WSGI application during the upgrade: gevent-websocket asks it which subprotocol
    to answer with."""

    def __init__(self, subprotocol: str) -> None:
        self.subprotocol = subprotocol

    def app_protocol(self, path: str) -> str:
        return self.subprotocol


class _Handler(WebSocketHandler):  # type: ignore[misc]
    """One HTTP connection of the listener: refuse, or upgrade and serve MQTT until the connection ends."""

    server: _Server
    peer: PeerCertificate = NO_PEER

    def run_application(self) -> None:
        listener = self.server.listener
        env = self.environ
        path = env.get("PATH_INFO", "")
        if not listener.path_matches(path):
            return self._refuse("404 Not Found", f"no MQTT endpoint at {path}\n", "path")
        if env.get("REQUEST_METHOD") != "GET" or env.get("HTTP_UPGRADE", "").lower() != "websocket":
            return self._refuse(
                "426 Upgrade Required", "this endpoint speaks MQTT over WebSocket only\n", "not_websocket"
            )
        origin = env.get("HTTP_ORIGIN", "")
        if not listener.origin_allowed(origin):
            return self._refuse("403 Forbidden", f"origin {origin!r} is not allowed\n", "origin")
        subprotocol = choose_subprotocol(env.get("HTTP_SEC_WEBSOCKET_PROTOCOL", ""))
        if not subprotocol:
            return self._refuse("400 Bad Request", NO_SUBPROTOCOL, "subprotocol")
        self.application = _Chosen(subprotocol)
        failed = self.upgrade_connection()  # gevent-websocket: version and key checks, then the 101
        if not hasattr(self, "websocket"):
            listener.ctx.metrics.refusals.labels(listener.ctx.name, "websocket_handshake").inc()
            self.close_connection = True
            self.result = failed or []
            self.process_result()
            return None
        self.write(b"")  # the 101 goes out now; then the connection is MQTT's
        stream = WebSocketStream(self.socket, client=False, read=self.rfile.read1, subprotocol=subprotocol)
        try:
            listener.serve(stream, self.client_address, self.peer)
        finally:
            # the stream has sent its own close frame: gevent-websocket must not write another one
            self.websocket.closed = True
            self.environ["wsgi.websocket"] = None
        return None

    def _refuse(self, status: str, body: str, reason: str) -> None:
        listener = self.server.listener
        listener.ctx.metrics.refusals.labels(listener.ctx.name, reason).inc()
        logger.info("mqtt-ws {}: refused {}: {}", listener.ctx.name, self.client_address[0], body.strip())
        self.close_connection = True
        self.start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        self.result = [body.encode()]
        self.process_result()

    def log_request(self) -> None:
        pass  # refusals are logged above; upgraded connections by the MQTT flow


class _Server(WSGIServer):  # type: ignore[misc]
    """pywsgi with the listener's TLS handshake (in the connection's greenlet) before HTTP."""

    def __init__(self, listener: MqttWsListener, address: tuple[str, int]) -> None:
        super().__init__(
            address,
            application=_never_called,
            handler_class=_Handler,
            log=None,
            error_log=_LogWriter(),
        )
        self.listener = listener

    def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.listener.tune_socket(sock)
        accepted = self.listener.accept_tls(sock, address)
        if accepted is None:
            return
        handler = self.handler_class(accepted[0], address, self)
        handler.peer = accepted[1]
        handler.handle()


class MqttWsListener(MqttServing):
    """One ``[[listener]]`` with ``protocol = "mqtt-ws"``: plain, TLS or mTLS (``[listener.tls]``); the
    target is ``ws://`` / ``wss://`` (a WebSocket client offering ``mqtt``) or ``tcp://`` / ``tls://``."""

    PROTOCOL: ClassVar[str] = "mqtt-ws"
    SCHEMES: ClassVar[tuple[str, ...]] = ("ws", "wss", "tcp", "tls")

    def __init__(self, settings: Any, chain: HandlerChain, metrics: Metrics) -> None:
        super().__init__(settings, chain, metrics)
        self.path = settings.path_prefix.rstrip("/")
        self.origins = frozenset(settings.allowed_origins)
        self.server = _Server(self, (settings.host, settings.port))
        self.server.init_socket()
        self.address = self.server.address[:2]

    @classmethod
    def make_dialer(cls, settings: Any) -> Dialer:
        target = settings.parsed_target
        if target.scheme not in ("ws", "wss"):
            return super().make_dialer(settings)
        tls = cls.target_context(settings)
        server_name = settings.target_tls.server_name if settings.target_tls is not None else ""
        host, port, path = target.host, target.port, target.path

        def dial(timeout: float) -> Stream:
            return dial_websocket(host, port, path, timeout, tls, server_name)

        return dial

    def path_matches(self, path: str) -> bool:
        """An empty path_prefix takes every path; otherwise the path itself (a trailing "/" ignored)."""
        return not self.path or path.rstrip("/") == self.path

    def origin_allowed(self, origin: str) -> bool:
        """No allowed_origins: any Origin (or none, as non-browser clients send). Otherwise one of them."""
        return not self.origins or origin in self.origins

    def on_start(self) -> None:
        self.server.start()
        logger.info(
            "listener {!r}: mqtt-ws on {}:{}{} -> {}",
            self.ctx.name,
            *self.address,
            self.path or "/*",
            self.ctx.settings.target,
        )

    def stop_accepting(self) -> None:
        if not self.server.closed:
            self.server.close()
