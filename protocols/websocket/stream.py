"""A WebSocket connection as the byte stream MQTT's pumps read and write (``protocols.mqtt.proxy.Stream``).

``recv`` returns the payload bytes of binary frames (whatever a read completed, not aligned to frames or
MQTT packets); ping, pong and close frames are answered here. ``sendall`` sends one binary frame. A text
frame or a protocol violation sends the matching close frame (1003 / 1002) and raises
:class:`WebSocketError` (an OSError, so the pumps end that one connection as for a broken socket).
``shutdown`` sends a close frame first, so the peer sees a WebSocket close, not just a dropped TCP stream.
"""

from __future__ import annotations

import contextlib
import socket
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
    close_payload,
    encode_frame,
)

__all__ = ["WebSocketError", "WebSocketStream"]

CLOSE_SEND_TIMEOUT = 1.0  # seconds a close frame may wait for a peer that does not read


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
        self.close_sent = False
        self.close_received: int | None = None  # the peer's close code

    # -------------------------------------------------------------------------------------- reading
    def recv(self, bufsize: int, /) -> bytes:
        while not self._eof:
            data = self._pending or self._read(bufsize)
            self._pending = b""
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

    def _answer_control(self) -> None:
        control = self._decoder.control
        self._decoder.control = []
        for opcode, body in control:
            if opcode == OP_PING:
                with contextlib.suppress(OSError):
                    self._send(encode_frame(OP_PONG, body, self._mask))
            elif opcode == OP_CLOSE:
                code = (body[0] << 8) | body[1] if len(body) >= 2 else CLOSE_NORMAL
                self.close_received = code
                self._eof = True  # what follows a close frame is not read (RFC 6455 §5.5.1)
                self._send_close(code if len(body) >= 2 else CLOSE_NORMAL, "")
                return

    # -------------------------------------------------------------------------------------- writing
    def sendall(self, data: bytes, /) -> None:
        if self.close_sent:
            raise BrokenPipeError("WebSocket closed")
        self._send(encode_frame(OP_BINARY, data, self._mask))

    def _send(self, frame: bytes) -> None:
        with self._lock:
            self.sock.sendall(frame)

    def _send_close(self, code: int, reason: str) -> None:
        """Send a close frame once; skipped when a frame is being written (it would land inside it) or
        the peer does not take it within CLOSE_SEND_TIMEOUT."""
        if self.close_sent:
            return
        self.close_sent = True
        if not self._lock.acquire(blocking=False):
            return
        try:
            with contextlib.suppress(OSError), gevent.Timeout(CLOSE_SEND_TIMEOUT, False):
                self.sock.sendall(encode_frame(OP_CLOSE, close_payload(code, reason), self._mask))
        finally:
            self._lock.release()

    # -------------------------------------------------------------------------------------- socket API
    def settimeout(self, value: float | None, /) -> None:
        self.sock.settimeout(value)

    def shutdown(self, how: int, /) -> None:
        self._send_close(CLOSE_NORMAL, "")
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()
