"""The ``mqtt-ws`` listener: MQTT over WebSocket on gevent pywsgi.

pywsgi parses the HTTP upgrade request; this module checks it (RFC 6455 section 4.2: path, method,
version, key, Origin, subprotocol) and answers it: ``101`` or a 4xx with a one-line log, never a 500 or a
traceback for a client's mistake. The request head has ``connect_timeout`` to arrive whole. After the 101
the connection is a :class:`WebSocketStream` handed to the very same per-connection flow as the TCP
listener (``MqttServing.serve``): connect_timeout for the CONNECT, limits, session actors, authorization,
metrics, keepalive and shutdown are shared.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import socket
from typing import Any, ClassVar

import gevent
from gevent.pywsgi import MAX_REQUEST_LINE, WSGIHandler, WSGIServer
from loguru import logger

from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.actors.services import ListenerServices
from ferryman.protocols.accept import ExhaustionBackoff
from ferryman.protocols.mqtt.context import Dialer, Stream
from ferryman.protocols.mqtt.listener import MqttServing
from ferryman.protocols.tls.server import NO_PEER, PeerCertificate

from .dialer import dial_websocket
from .kind import MQTT_WS_KIND
from .stream import WebSocketStream

__all__ = ["SUBPROTOCOLS", "MqttWsListener", "choose_subprotocol"]

#: The subprotocols MQTT over WebSocket is offered under: "mqtt" (MQTT 3.1.1 and 5.0, MQTT-6.0.0-3/4) and
#: "mqttv3.1" (older 3.1 clients).
SUBPROTOCOLS = ("mqtt", "mqttv3.1")
NO_SUBPROTOCOL = "offer Sec-WebSocket-Protocol mqtt or mqttv3.1\n"
WS_VERSION = "13"  # RFC 6455: the only version there is
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
NOT_WEBSOCKET = "this endpoint speaks MQTT over WebSocket only\n"
MAX_LOGGED = 120  # characters of client input quoted in a log line


def choose_subprotocol(offered: str) -> str:
    """The first of the client's offers (a comma-separated header value) that MQTT speaks, or ""."""
    for token in offered.split(","):
        token = token.strip()
        if token in SUBPROTOCOLS:
            return token
    return ""


def _tokens(value: str) -> set[str]:
    """The comma-separated tokens of a header value, lower-cased (Connection, Upgrade)."""
    return {t.strip().lower() for t in value.split(",")}


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def key_valid(key: str) -> bool:
    """A Sec-WebSocket-Key is the base64 of 16 bytes (RFC 6455 4.1): 24 characters of the alphabet."""
    try:
        return len(key) == 24 and len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError):  # not base64, or not ASCII (UnicodeEncodeError)
        return False


def handshake_refusal(env: dict[str, Any], http_version: str) -> tuple[str, str, list[tuple[str, str]]]:
    """What is wrong with an upgrade request (a GET asking for ``Upgrade: websocket`` on the endpoint) as
    (status, body, extra headers), or ("", "", []) when nothing is. 400 for a malformed handshake, 426
    (with the version spoken) for another WebSocket version (RFC 6455 4.2.1, 4.2.2). Origin and the
    subprotocol are the listener's own checks."""
    if http_version != "HTTP/1.1":
        return "400 Bad Request", f"the upgrade needs HTTP/1.1, not {http_version[:20]}\n", []
    if not env.get("HTTP_HOST", "").strip():
        return "400 Bad Request", "no Host header\n", []
    if "upgrade" not in _tokens(env.get("HTTP_CONNECTION", "")):
        return "400 Bad Request", "the Connection header does not name Upgrade\n", []
    if env.get("CONTENT_LENGTH", "") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in env:
        return "400 Bad Request", "an upgrade request has no body\n", []
    if env.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != WS_VERSION:
        headers = [("Sec-WebSocket-Version", WS_VERSION), ("Upgrade", "websocket")]
        return "426 Upgrade Required", f"Sec-WebSocket-Version {WS_VERSION} is the one spoken here\n", headers
    if not key_valid(env.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()):
        return "400 Bad Request", "Sec-WebSocket-Key is not the base64 of 16 bytes\n", []
    return "", "", []


def _quoted(text: object) -> str:
    """Client input for a log line: repr'd (no line breaks) and cut short."""
    out = repr(text)
    return out if len(out) <= MAX_LOGGED else out[:MAX_LOGGED] + "..."


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


def _plain_response(status: str, body: str) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection (for pywsgi's own parse errors)."""
    raw = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + raw


class _NoBody:
    """Stands in for pywsgi's request body reader: the connection is closed after the one request, so a
    body (which an upgrade request must not have) is never read, however long it claims to be."""

    def _discard(self) -> None:
        pass


_NO_BODY = _NoBody()


class _Handler(WSGIHandler):  # type: ignore[misc]
    """One HTTP connection of the listener: refuse, or upgrade and serve MQTT until the connection ends."""

    server: _Server
    peer: PeerCertificate = NO_PEER
    destination: tuple[str, int] | None = None  # what the client connected to at a balancer (PROXY)
    head_deadline: gevent.Timeout | None = None  # connect_timeout for the request head, stopped here

    def run_application(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.close()  # the head is whole; the CONNECT has its own deadline
        self.wsgi_input = _NO_BODY
        listener = self.server.listener
        env = self.environ
        path = env.get("PATH_INFO", "")
        if not listener.path_matches(path):
            return self._refuse("404 Not Found", f"no MQTT endpoint at {path}\n", "path")
        if env.get("REQUEST_METHOD") != "GET" or "websocket" not in _tokens(env.get("HTTP_UPGRADE", "")):
            return self._refuse(
                "426 Upgrade Required", NOT_WEBSOCKET, "not_websocket", [("Upgrade", "websocket")]
            )
        status, body, headers = handshake_refusal(env, self.request_version or "")
        if status:
            return self._refuse(status, body, "websocket_handshake", headers)
        origin = env.get("HTTP_ORIGIN", "")
        if not listener.origin_allowed(origin):
            return self._refuse("403 Forbidden", f"origin {origin!r} is not allowed\n", "origin")
        subprotocol = choose_subprotocol(env.get("HTTP_SEC_WEBSOCKET_PROTOCOL", ""))
        if not subprotocol:
            return self._refuse("400 Bad Request", NO_SUBPROTOCOL, "subprotocol")
        self.close_connection = True
        self.start_response(
            "101 Switching Protocols",
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept_key(env["HTTP_SEC_WEBSOCKET_KEY"].strip())),
                ("Sec-WebSocket-Protocol", subprotocol),
            ],
        )
        self.write(b"")  # the 101 goes out now; then the connection is MQTT's
        stream = WebSocketStream(self.socket, client=False, read=self.rfile.read1, subprotocol=subprotocol)
        listener.serve(stream, self.client_address, self.peer, self.destination)
        return None

    def _refuse(
        self, status: str, body: str, reason: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        listener = self.server.listener
        listener.ctx.metrics.refusals.labels(listener.ctx.name, reason).inc()
        logger.info(
            "mqtt-ws {}: refused {}: {} {}",
            listener.ctx.name,
            self.client_address[0],
            status[:3],
            _quoted(body.strip()),
        )
        self.close_connection = True
        self.start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close"), *(headers or [])],
        )
        self.result = [body.encode()]
        self.process_result()

    def read_requestline(self) -> str:
        line: str = super().read_requestline()
        if len(line) >= MAX_REQUEST_LINE:  # pywsgi answers 414 itself
            self._client_error("414", f"request line over {MAX_REQUEST_LINE} bytes")
        return line

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """A request pywsgi could not parse (bad request line or version, a header line too long, too
        many headers): 400 and one log line, never a traceback."""
        self._client_error("400", f"malformed HTTP request: {_quoted(str(ex) or type(ex).__name__)}")
        return "400", _plain_response("400 Bad Request", "malformed HTTP request\n")

    def _client_error(self, status: str, why: str) -> None:
        listener = self.server.listener
        listener.ctx.metrics.refusals.labels(listener.ctx.name, "bad_request").inc()
        logger.info("mqtt-ws {}: refused {}: {} {}", listener.ctx.name, self.client_address[0], status, why)

    def log_request(self) -> None:
        pass  # refusals are logged above; upgraded connections by the MQTT flow


class _Server(ExhaustionBackoff, WSGIServer):  # type: ignore[misc]
    """pywsgi with the listener's TLS handshake (in the connection's greenlet) before HTTP, and an accept
    loop that rides out descriptor exhaustion."""

    def __init__(self, listener: MqttWsListener, address: tuple[str, int]) -> None:
        super().__init__(
            address,
            application=_never_called,
            handler_class=_Handler,
            log=None,
            error_log=_LogWriter(),
        )
        self.listener = listener
        self.label = listener.ctx.name

    def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        listener = self.listener
        listener.tune_socket(sock)
        peer = listener.proxied_peer(sock, address)  # PROXY protocol: before TLS and the HTTP upgrade
        if peer is None:
            return
        address, destination = peer
        accepted = listener.accept_tls(sock, address)
        if accepted is None:
            return
        timeout = listener.ctx.settings.connect_timeout
        handler = self.handler_class(accepted[0], address, self)
        handler.peer = accepted[1]
        handler.destination = destination
        # the whole request head within connect_timeout, however slowly its bytes come
        deadline = handler.head_deadline = gevent.Timeout(timeout)
        deadline.start()
        try:
            handler.handle()
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            listener.ctx.metrics.refusals.labels(listener.ctx.name, "handshake_timeout").inc()
            logger.info(
                "mqtt-ws {}: closed {}: no complete upgrade request within {}s",
                listener.ctx.name,
                address[0],
                timeout,
            )
        finally:
            deadline.close()
            accepted[0].close()


class MqttWsListener(MqttServing):
    """One ``[[listener]]`` with ``protocol = "mqtt-ws"``: plain, TLS or mTLS (``[listener.tls]``); the
    target is ``ws://`` / ``wss://`` (a WebSocket client offering ``mqtt``) or ``tcp://`` / ``tls://``."""

    kind = MQTT_WS_KIND  # its settings keys and checks, for the loader (ferryman/wiring.py)

    PROTOCOL: ClassVar[str] = "mqtt-ws"
    SCHEMES: ClassVar[tuple[str, ...]] = ("ws", "wss", "tcp", "tls")

    def __init__(
        self,
        settings: Any,
        chain: HandlerChain,
        metrics: Metrics,
        services: ListenerServices | None = None,
    ) -> None:
        super().__init__(settings, chain, metrics)
        self.path = settings.path_prefix.rstrip("/")
        self.origins = frozenset(settings.allowed_origins)
        self.server = _Server(self, (settings.host, settings.port))
        self.server.reuse_port = services is not None and services.reuse_port  # one socket per worker
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
