"""Fewer wake-ups under a flood: let the broker's small writes pile up before reading them.

A broker writes one TCP segment per message. A reader that sleeps in epoll is woken for every one of
them, and on loopback the waking is paid by the writer: with one PUBLISH per segment, mosquitto spent
more time waking the gateway than sending (bench/ws_throughput.py; mosquitto's own cost per message rose
by about 70 %). ``ReadCoalescer`` does what a NIC's adaptive interrupt moderation does: after a read that
came back big (the link is flooding), the next wait asks the kernel (``SO_RCVLOWAT``) to wake the pump
only once ``LOW_WATER`` bytes are queued, or after ``MAX_WAIT`` at the latest. A quiet link never enters
this mode, so a lone message is read as soon as it arrives; under a flood a message waits at most
``MAX_WAIT`` more, which is shorter than the queueing a flood causes anyway.

Plain TCP sockets only (``tcp://`` and ``ws://`` upstreams): with TLS the kernel sees records, not
messages, and the SSL object may hold decrypted bytes the kernel does not know of.
"""

from __future__ import annotations

import socket
import ssl

from gevent.socket import wait_read

__all__ = ["LOW_WATER", "MAX_WAIT", "ReadCoalescer"]

LOW_WATER = 16384  # bytes: a read at least this big means the link is flooding
MAX_WAIT = 0.001  # seconds a flooded read may wait for LOW_WATER bytes


class ReadCoalescer:
    """Call ``wait`` before each read of ``stream`` and ``seen`` with the size of what it returned.
    ``stream``: a socket, or an adapter with the socket it reads in a ``sock`` attribute (a WebSocket);
    anything else (TLS, a closed socket) makes ``wait`` do nothing."""

    __slots__ = ("_fd", "_flooding", "_sock")

    def __init__(self, stream: object) -> None:
        sock = stream
        if not isinstance(sock, socket.socket):  # an adapter's own attribute: no socket __getattr__ magic
            sock = getattr(stream, "__dict__", {}).get("sock")
        self._sock: socket.socket | None = None
        self._fd = -1
        self._flooding = False
        if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):
            try:
                self._fd = sock.fileno()
            except OSError:
                return
            if self._fd >= 0:
                self._sock = sock

    def seen(self, nbytes: int) -> None:
        self._flooding = nbytes >= LOW_WATER and self._sock is not None

    def wait(self) -> None:
        """While flooding: block until LOW_WATER bytes are queued or MAX_WAIT has passed. The low-water
        mark is set only for this wait, so no other read of the socket can stall on it."""
        sock = self._sock
        if not self._flooding or sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, LOW_WATER)
            try:
                wait_read(self._fd, MAX_WAIT)
            except TimeoutError:
                pass
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except OSError:
            self._sock = None  # closed meanwhile: the read that follows reports it
