"""The ``echo`` listener actor: a gevent TCP server, started and stopped by the ferryman Gateway."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pykka
from gevent.server import StreamServer
from loguru import logger

from .kind import KIND

__all__ = ["EchoListener"]


class EchoListener(pykka.ThreadingActor):
    """One ``[[listener]]`` with ``protocol = "echo"``."""

    kind = KIND  # its settings keys and checks: what makes it configurable

    @classmethod
    def validate_settings(cls, settings: Any) -> list[str]:
        """What this listener cannot do with (loaded, valid) settings: nothing to add here."""
        return []

    def __init__(self, settings: Any, chain: Any, metrics: Any, services: Any = None) -> None:
        super().__init__()
        self.settings = settings
        self.greeting: bytes = settings.options["greeting"].encode() + b"\n"
        self.max_line: int = settings.options["max_line"]
        self.token: bytes = settings.options["token"].encode()
        self.connections: set[socket.socket] = set()
        self.server = StreamServer((settings.host, settings.port), self._handle)
        self.server.init_socket()  # an address in use fails here: the Gateway reports it
        self.address: tuple[str, int] = self.server.address[:2]

    def on_start(self) -> None:
        self.server.start()
        logger.info("listener {!r}: echo on {}:{}", self.settings.name, *self.address)

    def bound_address(self) -> tuple[str, int]:
        return self.address

    def stop_accepting(self) -> None:
        if not self.server.closed:
            self.server.close()

    def close_all(self, refusal: Any = None, drain: float = 0.0) -> int:
        conns = list(self.connections)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(conns)

    def on_stop(self) -> None:
        self.stop_accepting()
        self.close_all()

    def _handle(self, sock: socket.socket, addr: Any) -> None:
        limit = self.settings.max_connections
        if limit and len(self.connections) >= limit:
            sock.sendall(b"ERR busy\n")
            sock.close()
            return
        self.connections.add(sock)
        reader = sock.makefile("rb")
        try:
            sock.sendall(self.greeting)
            first = True
            while True:
                line = reader.readline(self.max_line + 2)  # the line, its CR LF, and one byte to tell
                if not line:
                    return
                body = line.rstrip(b"\r\n")
                if len(body) > self.max_line:
                    sock.sendall(b"ERR line too long\n")
                    return
                if first and self.token:
                    if body != self.token:
                        sock.sendall(b"ERR bad token\n")
                        return
                    sock.sendall(b"OK\n")
                else:
                    sock.sendall(body + b"\n")
                first = False
        except OSError:
            return
        finally:
            self.connections.discard(sock)
            reader.close()
            sock.close()
