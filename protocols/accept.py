"""Accept loops that ride out descriptor exhaustion, for every TCP listener (MQTT, MQTT over WebSocket,
HTTP): a protocol-neutral piece, so no listener imports another protocol's for it."""

from __future__ import annotations

import errno
from typing import Any

import gevent
from loguru import logger

from .sockets import tcp_listener

__all__ = ["EXHAUSTED", "ExhaustionBackoff"]

#: accept() errors that mean "out of descriptors or memory for now", not "the listening socket is broken".
EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class ExhaustionBackoff:
    """Mix into a gevent ``StreamServer`` (or ``WSGIServer``) subclass, before it, so that its accept loop
    rides out descriptor exhaustion.

    When the process is at its fd limit (RLIMIT_NOFILE, EMFILE) or the system at its own (ENFILE), accept()
    fails for as long as no descriptor is freed. gevent's own loop then prints a traceback for every
    attempt; this one logs the first failure of an episode once, stops watching the listening socket,
    tries again after a short pause that doubles up to ``MAX_PAUSE`` seconds, and says so when it accepts
    again. Connections wait in the kernel's backlog meanwhile; the listener never dies of it."""

    MIN_PAUSE = 0.05
    MAX_PAUSE = 1.0
    label = ""  # the listener's name, in the log lines
    #: Set before ``init_socket()``: the listening socket is one of a SO_REUSEPORT group, one per worker
    #: process (``ferryman run --workers N``, ``protocols/sockets.py``); False binds as gevent does.
    reuse_port = False
    _pause = 0.0
    _failed = 0

    def get_listener(self, address: Any, backlog: int | None = None, family: int | None = None) -> Any:
        """gevent's ``init_socket`` asks this for the listening socket (on the instance, so this instance
        method takes the place of the server class's classmethod)."""
        if not self.reuse_port:
            return super().get_listener(address, backlog, family)  # type: ignore[misc]
        server: Any = self
        return tcp_listener(
            address, backlog if backlog is not None else server.backlog, family, server.reuse_addr
        )

    def do_read(self) -> Any:
        try:
            args = super().do_read()  # type: ignore[misc]
        except OSError as exc:
            if exc.errno not in EXHAUSTED:
                raise
            self._exhausted(exc)
            return None
        if self._failed and args:
            logger.warning(
                "listener {!r}: accepting again after {} failed accept(s)", self.label, self._failed
            )
            self._failed = 0
            self._pause = 0.0
        return args

    def _exhausted(self, exc: OSError) -> None:
        if not self._failed:
            logger.error(
                "listener {!r}: cannot accept connections: {} (errno {}); pausing accepts until "
                "descriptors are free",
                self.label,
                (exc.strerror or str(exc)).lower(),
                errno.errorcode.get(exc.errno or 0, exc.errno),
            )
        self._failed += 1
        self._pause = min(self.MAX_PAUSE, self._pause * 2 if self._pause else self.MIN_PAUSE)
        server: Any = self
        server.stop_accepting()
        gevent.spawn_later(self._pause, self._resume)

    def _resume(self) -> None:
        server: Any = self
        if server.started and not server.closed:
            server.start_accepting()
