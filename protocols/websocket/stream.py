"""A WebSocket connection as the byte stream MQTT's pumps read and write (``protocols.mqtt.context.Stream``).

``recv`` returns the payload bytes of binary frames (whatever a read completed, not aligned to frames or
MQTT packets); ping, pong and close frames are answered here. ``sendall`` sends one binary frame. A text
frame or a protocol violation sends the matching close frame (1003 / 1002 / 1007) and raises
:class:`WebSocketError` (an OSError, so the pumps end that one connection as for a broken socket).
``shutdown`` sends a close frame first, so the peer sees a WebSocket close, not just a dropped TCP stream.

Control frames never hold the reader: a read that brings no MQTT bytes (pings, pongs, a piece of a frame
header) yields to the other greenlets before the next one, and counts against the timeout of
``settimeout`` (the keepalive), which only MQTT bytes satisfy. A batch of pings gets one pong, for the last
of them (RFC 6455 5.5.3), so a ping flood costs one write per read.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

import gevent
from gevent.lock import Semaphore

from .frames import (
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameDecoder,
    FrameError,
    close_answer,
    close_payload,
    encode_frame,
)

__all__ = ["WebSocketError", "WebSocketStream"]

CLOSE_SEND_TIMEOUT = 1.0  # seconds a close frame may wait for a peer that does not read
FAIR_READS = 16  # reads in one ``recv`` call (or in a row of them) before yielding to the other greenlets


class WebSocketError(OSError):
    """The peer broke the WebSocket protocol (or sent a text frame); the close frame has been sent."""


class WebSocketStream:
    """One side of an established WebSocket connection over ``sock``.

    ``client``: this end is the client (masks what it sends, expects unmasked frames). ``read``: how to read
    from the connection (default ``sock.recv``; a server that parsed the HTTP upgrade with a buffered reader
    passes its ``read1``, so bytes it already buffered are not lost). ``pending``: bytes already read after
    the handshake."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        client: bool,
        read: Callable[[int], bytes] | None = None,
        pending: bytes = b"",
        subprotocol: str = "",
    ) -> None:
        self.sock = sock
        self.subprotocol = subprotocol
        self._read = read or sock.recv
        self._decoder = FrameDecoder(masked=not client)
        self._mask = client
        self._pending = pending
        self._lock = Semaphore()  # one frame at a time: pongs and closes must not land inside a data frame
        self._eof = False
        self._timeout: float | None = None  # what ``settimeout`` asked for: the limit on MQTT silence
        self._reads = 0
        self._broken = False  # a write failed part way: no close frame may follow it
        self.close_sent = False
        self.close_received: int | None = None  # the peer's close code

    # -------------------------------------------------------------------------------------- reading
    def recv(self, bufsize: int, /) -> bytes:
        """The next MQTT bytes; b"" at the end. TimeoutError when ``settimeout``'s limit passes without
        any (control frames do not count: they are not MQTT)."""
        timeout = self._timeout
        deadline = time.monotonic() + timeout if timeout is not None else 0.0
        first = True
        while not self._eof:
            if self._pending:
                data, self._pending = self._pending, b""
            else:
                self._reads += 1
                if not first or self._reads % FAIR_READS == 0:
                    gevent.sleep(0)  # a peer that always has bytes ready never lets recv block
                if first or timeout is None:
                    data = self._read(bufsize)  # the socket's own timeout is the whole limit
                else:
                    # control frames came, no MQTT bytes: what is left of the limit (the socket's timeout
                    # stays as it is, for the writes of the other direction)
                    with gevent.Timeout(self._left(deadline), TimeoutError("timed out: no MQTT bytes")):
                        data = self._read(bufsize)
            first = False
            if not data:
                self._eof = True
                break
            try:
                payload = self._decoder.feed(data)
            except FrameError as exc:
                self._eof = True
                self._send_close(exc.code, str(exc))
                raise WebSocketError(f"WebSocket: {exc}") from None
            if self._decoder.control:
                self._answer_control()
            if payload:
                return payload
        return b""

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out: no MQTT bytes")
        return left

    def _answer_control(self) -> None:
        control = self._decoder.control
        self._decoder.control = []
        ping: bytes | None = None
        for opcode, body in control:
            if opcode == OP_PING:
                ping = body  # one pong, for the last ping of the batch (RFC 6455 5.5.3)
            elif opcode == OP_CLOSE:
                self._eof = True  # what follows a close frame is not read (RFC 6455 §5.5.1)
                self.close_received = (body[0] << 8) | body[1] if len(body) >= 2 else CLOSE_NORMAL
                code, problem = close_answer(body)
                self._send_close(code, problem)
                if problem:
                    raise WebSocketError(f"WebSocket: {problem}")
                return
        if ping is not None:
            with contextlib.suppress(OSError):
                self._send(encode_frame(OP_PONG, ping, self._mask))

    # -------------------------------------------------------------------------------------- writing
    def sendall(self, data: bytes, /) -> None:
        if self.close_sent:
            raise BrokenPipeError("WebSocket closed")
        self._send(encode_frame(OP_BINARY, data, self._mask))

    def _send(self, frame: bytes) -> None:
        with self._lock:
            try:
                self.sock.sendall(frame)
            except BaseException:  # a timeout or an error part way through a frame
                self._broken = True
                raise

    def _send_close(self, code: int, reason: str) -> None:
        """Send a close frame once; skipped when a frame is being written (it would land inside it) or
        the peer does not take it within CLOSE_SEND_TIMEOUT."""
        if self.close_sent:
            return
        self.close_sent = True
        if self._broken or not self._lock.acquire(blocking=False):
            return
        try:
            with contextlib.suppress(OSError), gevent.Timeout(CLOSE_SEND_TIMEOUT, False):
                self.sock.sendall(encode_frame(OP_CLOSE, close_payload(code, reason), self._mask))
        finally:
            self._lock.release()

    # -------------------------------------------------------------------------------------- socket API
    def settimeout(self, value: float | None, /) -> None:
        """The limit on the time ``recv`` waits for MQTT bytes (and on each write)."""
        self._timeout = value
        self.sock.settimeout(value)

    def shutdown(self, how: int, /) -> None:
        self._send_close(CLOSE_NORMAL, "")
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()
