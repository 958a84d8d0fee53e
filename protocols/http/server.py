"""The pywsgi server of an ``http`` listener: TLS terminated in each connection's own greenlet through
``TlsTerminator`` (so the verified client certificate reaches the Session), TCP_NODELAY, a deadline on every
phase of a connection, a strict request head (``headers.py``) and a record of the open connections for a
graceful stop.

Phases and their deadlines (each a total, not per read: a client trickling one byte at a time gains nothing):

- **idle**: waiting for the first byte of the next request on a keep-alive connection, ``idle_timeout``;
  then the connection is closed without a response (there is no request to answer);
- **head**: the request line and headers, ``header_timeout`` from their first byte (a new connection's first
  request: from the accept, so a connection that sends nothing is closed too); on expiry a request begun but
  unfinished gets 408 and the connection is closed, a connection that sent nothing is closed quietly;
- **body**: ``body_timeout`` for the whole body, from the end of the head (``TimedInput``); on expiry 408 and
  close;
- **response**: each write may take up to ``idle_timeout`` (a reader that takes nothing for that long is
  closed); a streamed response has no total deadline.

A refused head (``HeadError``: 400, 408, 431, 501, 505) is answered with a JSON error and
``Connection: close``; the connection then stops reading requests, reads out what the client already sent
for up to a second (so the answer is not lost to a TCP reset), and closes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import gevent
from gevent.pywsgi import MAX_REQUEST_LINE, Input, WSGIHandler, WSGIServer
from loguru import logger

from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.protocols.accept import ExhaustionBackoff
from ferryman.protocols.addresses import plain_address
from ferryman.protocols.proxy_protocol import ProxyHeaderError, TrustedProxies, real_address
from ferryman.protocols.tls.server import NO_PEER, TlsRefused, TlsTerminator

from .app import CONNECTION_KEY, HttpApp
from .auth import AuthCache
from .headers import BodyTimeout, Framing, HeadError, framing, read_headers, request_line

__all__ = [
    "BODY_TIMEOUT",
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "BodyTimeout",
    "HttpConnection",
    "HttpServer",
    "TimedInput",
]

#: Defaults of the listener settings of the same names (seconds).
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0
IDLE_TIMEOUT = 60.0
#: After a refused head: at most this long (and this many bytes) reading out what the client still sends.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1 << 20


class _HeadTimeout(BaseException):
    """The head deadline (a BaseException: pywsgi's ``except Exception`` must not turn it into a 400)."""


def _arm(seconds: float, exc: type[BaseException]) -> Any:
    """A loop timer that throws ``exc`` into the calling greenlet after ``seconds``; ``.close()`` it. (What
    ``gevent.Timeout`` does, at a quarter of its cost: one is armed per phase of every request.)"""
    timer = gevent.get_hub().loop.timer(max(seconds, 0.0))
    timer.start(gevent.getcurrent().throw, exc)
    return timer


class TimedInput(Input):  # type: ignore[misc]
    """pywsgi's ``wsgi.input`` with one deadline (``time.monotonic()``) for the whole body. ``buffered``: the
    whole body is already in memory (no read can block), so no timer is armed."""

    __slots__ = ("buffered", "deadline")

    def read(self, length: int | None = None) -> bytes:
        return self._timed(Input.read, length)

    def readline(self, size: int | None = None) -> bytes:
        return self._timed(Input.readline, size)

    def _broken(self) -> None:
        """Never read from this body again (pywsgi's discard checks the flag; the connection is closed)."""
        inp: Any = self  # a slot of gevent's (untyped) Input
        inp._chunked_input_error = True

    def _timed(self, method: Any, arg: int | None) -> bytes:
        if self.buffered:
            return bytes(method(self, arg))
        left = self.deadline - time.monotonic()
        if left <= 0:
            self._broken()
            raise BodyTimeout()
        timer = _arm(left, BodyTimeout)
        try:
            data: bytes = method(self, arg)
            return data
        except BodyTimeout:
            self._broken()
            raise
        finally:
            timer.close()


def error_response(status: int, message: str) -> bytes:
    """A whole ``Connection: close`` response with the listener's JSON error body."""
    body = json.dumps({"error": message}).encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class HttpConnection(WSGIHandler):  # type: ignore[misc]
    """One client connection (pywsgi's handler lives as long as the keep-alive connection)."""

    auth: AuthCache
    busy = False
    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT
    idle_timeout = IDLE_TIMEOUT
    _requests = 0
    _started = 0.0  # time.monotonic() of the accept
    _head_timer: Any = None
    _buffered_body = -1  # bytes after the head already in the read buffer (-1: not known)
    _framing = Framing(None, False)

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        super().__init__(sock, address, server, rfile)
        self._started = time.monotonic()
        self.header_timeout = getattr(server, "header_timeout", HEADER_TIMEOUT)
        self.body_timeout = getattr(server, "body_timeout", BODY_TIMEOUT)
        self.idle_timeout = getattr(server, "idle_timeout", IDLE_TIMEOUT)

    # -- the phases --------------------------------------------------------------------------------------
    def handle(self) -> None:
        """pywsgi's request loop, with the refused-head answer, the linger and the close of our own."""
        try:
            while self.socket is not None:
                self.time_start = time.time()
                self.time_finish = 0
                result = self.handle_one_request()
                if result is None:
                    break
                if result is True:
                    continue
                self.status, response = result
                count = getattr(getattr(self.server, "app", None), "count", None)
                if count is not None:
                    count(int(self.status))
                self.socket.sendall(response)
                self._linger()
                break
        except OSError:
            pass  # the client went away while we answered
        finally:
            sock = self.__dict__.pop("socket", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            rfile = self.__dict__.pop("rfile", None)
            if rfile is not None:
                with contextlib.suppress(OSError):
                    rfile.close()
            self.__dict__.pop("wsgi_input", None)

    def handle_one_request(self) -> Any:
        if self.rfile.closed:
            return None
        first = self._requests == 0
        self._requests += 1
        now = time.monotonic()
        wait = self.header_timeout - (now - self._started) if first else self.idle_timeout
        buffered = self._first_bytes(wait)
        if not buffered:
            return None  # idle (or silent) too long, or the client closed: no request to answer
        end = buffered.find(b"\r\n\r\n")
        self._buffered_body = len(buffered) - end - 4 if end >= 0 else -1
        if end >= 0:  # the whole head is in memory: reading it cannot block, no deadline needed
            return super().handle_one_request()
        head_left = wait - (time.monotonic() - now) if first else self.header_timeout
        timer = self._head_timer = _arm(head_left, _HeadTimeout)
        try:
            return super().handle_one_request()
        except _HeadTimeout:
            self.close_connection = True
            return self._refuse(HeadError(408, "request head not received within header_timeout"))
        finally:
            timer.close()
            self._head_timer = None

    def _first_bytes(self, wait: float) -> bytes:
        """Waits up to ``wait`` seconds for the next request's first byte; what is buffered then (b"" when
        nothing came in time or the client closed)."""
        if wait <= 0:
            return b""
        sock = self.socket
        sock.settimeout(wait)  # a timer only when the read blocks (the socket's own wait)
        try:
            return bytes(self.rfile.peek(1))
        except (OSError, ValueError):
            return b""
        finally:
            sock.settimeout(self.idle_timeout)

    def read_requestline(self) -> str:
        """pywsgi's, ignoring one empty line before the request line (RFC 9112 2.2: some clients send a
        CRLF after a POST body)."""
        line = self.rfile.readline(MAX_REQUEST_LINE)
        if line in (b"\r\n", b"\n"):
            line = self.rfile.readline(MAX_REQUEST_LINE)
        return str(line.decode("latin-1"))

    def read_request(self, raw_requestline: str) -> bool:
        """The request line and head, strictly (``headers.py``); raises ``HeadError``."""
        self.requestline = raw_requestline.rstrip("\r\n")
        self.command, self.path, self.request_version = request_line(raw_requestline)
        self.headers = read_headers(self.rfile)
        frame = self._framing = framing(self.headers, self.request_version)
        self.content_length = frame.length
        if self.request_version == "HTTP/1.1":
            self.close_connection = self.headers.get("connection", "").lower() == "close"
        else:
            self.close_connection = self.headers.get("connection", "close").lower() != "keep-alive"
        return True

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """A refused head (and pywsgi's own client errors): a JSON answer, then the connection is closed."""
        if not isinstance(ex, HeadError):
            ex = HeadError(400, str(ex) or "malformed request")
        return self._refuse(ex)

    def _refuse(self, ex: HeadError) -> tuple[str, bytes]:
        logger.debug("http connection {}: refused {}: {}", self.client_address, ex.status, ex.message)
        self.close_connection = True
        return str(ex.status), error_response(ex.status, ex.message)

    def _linger(self) -> None:
        """After a refusal: stop sending, read out (and drop) what the client still sends, for a bound."""
        sock = self.socket
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        left = _LINGER_BYTES
        deadline = time.monotonic() + _LINGER_SECONDS
        with contextlib.suppress(OSError):
            while left > 0 and (wait := deadline - time.monotonic()) > 0:
                sock.settimeout(wait)
                data = sock.recv(min(left, 65536))
                if not data:
                    break
                left -= len(data)

    # -- pywsgi's hooks ----------------------------------------------------------------------------------
    def log_request(self) -> None:
        """No access log: formatting it cost more than a tenth of a publish request."""

    def log_error(self, msg: str, *args: Any) -> None:
        """pywsgi's complaints about client input: debug level (client noise, not our errors)."""
        logger.debug("http connection {}: {}", self.client_address, msg % args if args else msg)

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
        """pywsgi's environ, built from what ``read_headers`` already split (one pass over the headers), with
        the body's framing from ``framing`` and its deadline (``TimedInput``)."""
        timer = self._head_timer
        if timer is not None:  # the head is complete: its deadline is over, the body's begins
            timer.close()
            self._head_timer = None
        env: dict[str, Any] = self.server.get_environ()
        env["REQUEST_METHOD"] = self.command
        env["SCRIPT_NAME"] = ""
        path, _, query = self.path.partition("?")
        env["PATH_INFO"] = unquote(path, encoding="latin-1")
        env["QUERY_STRING"] = query
        headers = self.headers
        ctype = headers.typeheader
        if ctype is not None:
            env["CONTENT_TYPE"] = ctype
        frame = self._framing
        if frame.length is not None:
            env["CONTENT_LENGTH"] = str(frame.length)
        env["SERVER_PROTOCOL"] = self.request_version
        address = self.client_address
        if isinstance(address, tuple):
            env["REMOTE_ADDR"] = str(address[0])
            env["REMOTE_PORT"] = str(address[1])
        for key, value in headers.environ:
            prior = env.get(key)
            if prior is None:
                env[key] = value
            else:
                env[key] = f"{prior}; {value}" if key == "HTTP_COOKIE" else f"{prior},{value}"
        sock = self.socket if env.get("HTTP_EXPECT", "").lower() == "100-continue" else None
        inp = TimedInput(self.rfile, frame.length, socket=sock, chunked_input=frame.chunked)
        inp.deadline = time.monotonic() + self.body_timeout
        inp.buffered = not frame.chunked and (frame.length or 0) <= self._buffered_body
        # Always the framed input, also for "Connection: upgrade" (pywsgi would hand over the raw stream):
        # this listener upgrades nothing, and a body is only ever read as its framing says.
        self.wsgi_input = env["wsgi.input"] = inp
        env["wsgi.input_terminated"] = True
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


class HttpServer(ExhaustionBackoff, WSGIServer):  # type: ignore[misc]
    """pywsgi with the strict head checks and deadlines of ``HttpConnection``, and an accept loop that
    rides out descriptor exhaustion."""

    handler_class = HttpConnection

    def __init__(
        self,
        address: tuple[str, int],
        app: HttpApp,
        chain: HandlerChain,
        metrics: Metrics,
        tls: TlsTerminator | None,
        handshake_timeout: float,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        trusted: TrustedProxies | None = None,
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
        self.label = app.name
        self.chain = chain
        self.metrics = metrics
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        #: proxy_protocol = true: the load balancers a PROXY header is read from (before TLS); None: none
        self.trusted = trusted
        self.connections: set[HttpConnection] = set()
        self._open = metrics.connections_open.labels(app.name)
        self._total = metrics.connections_total.labels(app.name)

    def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.trusted is not None:
            try:
                address = real_address(sock, plain_address(address), self.trusted, self.handshake_timeout)
            except ProxyHeaderError as exc:
                self.metrics.refusals.labels(self.app.name, "proxy_protocol").inc()
                logger.warning("refusing {}:{}: PROXY protocol: {}", address[0], address[1], exc)
                return
        peer = NO_PEER
        if self.tls is not None:
            try:
                sock, peer = self.tls.accept(sock, self.handshake_timeout)
            except TlsRefused as exc:
                self.metrics.refusals.labels(self.app.name, "tls").inc()
                logger.info("TLS handshake with {}:{} failed: {}", address[0], address[1], exc)
                return
        sock.settimeout(self.idle_timeout)  # each single read or write; the phases have their own deadlines
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
