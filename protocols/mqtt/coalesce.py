"""Fewer wake-ups under a flood: let the broker's small writes pile up before reading them.

A broker writes one TCP segment per message. A reader that sleeps in epoll is woken for every one of
them, and on loopback the waking is paid by the writer: with one PUBLISH per segment, mosquitto spent
more time waking the gateway than sending (bench/ws_throughput.py: mosquitto's own cost per message rose
by about 70 %), and the gateway paid a read, a decode and a write per handful of messages.

``ReadCoalescer`` does what a NIC's interrupt moderation does. After a read that came back big
(``BATCH`` bytes or more: the link is flooding, the pump is behind), the next wait asks the kernel
(``SO_RCVLOWAT``) to wake the pump only once ``BATCH`` bytes are queued, or after ``max_wait`` (the
listener's ``flood_batch_wait``) at the latest. A link that is not flooding never waits, so a lone
message is read as soon as it arrives; under a flood a message waits at most ``max_wait`` more, and
usually far less (at 30 MB/s, 16 KiB take half a millisecond).

Measured (bench/ws_throughput.py, MQTT over WebSocket, 4 publishers and a subscriber, ratio to
mosquitto's own websockets listener): no batching 0.60; 16 KiB with ``max_wait`` 1 ms 0.82, with 5 ms
0.96 (the gateway then at 0.4 µs per message up and down); 8 KiB / 1 ms 0.74; 32 KiB / 2 ms 0.71;
48 KiB / 5 ms 0.97. The wait matters more than the batch size; why short waits with big batches do
worse has not been pinned down.

Plain TCP sockets only (``tcp://`` and ``ws://`` upstreams): with TLS the kernel sees records, not
messages, and the SSL object may hold decrypted bytes the kernel does not know of.
"""

from __future__ import annotations

import fcntl
import socket
import ssl
import struct
import termios

from gevent.socket import wait_read

__all__ = ["BATCH", "ReadCoalescer"]

BATCH = 16384  # bytes: a read at least this big means the link is flooding; the low-water mark then


class ReadCoalescer:
    """Call ``wait`` before each read of ``stream`` and ``seen`` with the size of what it returned.
    ``stream``: a socket, or an adapter with the socket it reads in a ``sock`` attribute (a WebSocket);
    anything else (TLS, a closed socket), or ``max_wait`` 0, makes ``wait`` do nothing."""

    __slots__ = ("_fd", "_flooding", "_max_wait", "_sock")

    def __init__(self, stream: object, max_wait: float) -> None:
        sock = stream
        if not isinstance(sock, socket.socket):  # an adapter's own attribute: no socket __getattr__ magic
            sock = getattr(stream, "__dict__", {}).get("sock")
        self._sock: socket.socket | None = None
        self._fd = -1
        self._flooding = False
        self._max_wait = max_wait
        if max_wait > 0 and isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):
            try:
                self._fd = sock.fileno()
            except OSError:
                return
            if self._fd >= 0:
                self._sock = sock

    def seen(self, nbytes: int) -> None:
        self._flooding = nbytes >= BATCH and self._sock is not None

    def wait(self) -> None:
        """While flooding: block until BATCH bytes are queued or ``max_wait`` has passed. The low-water
        mark is set only for this wait, so no other read of the socket can stall on it. When a batch is
        queued already, returns at once without a trip through the hub (other greenlets would run first)."""
        sock = self._sock
        if not self._flooding or sock is None:
            return
        try:
            if _queued(self._fd) >= BATCH:
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, BATCH)
            try:
                wait_read(self._fd, self._max_wait)
            except TimeoutError:
                pass
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except OSError:
            self._sock = None  # closed meanwhile: the read that follows reports it


_INT = struct.Struct("i")


def _queued(fd: int) -> int:
    """Bytes waiting in the socket's receive queue (FIONREAD)."""
    return int(_INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
