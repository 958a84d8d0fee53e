"""Listening sockets shared by several processes: the one place that sets ``SO_REUSEPORT``.

With ``ferryman run --workers N`` every worker opens its own listening socket on each listener's address
with ``SO_REUSEPORT``, and the kernel spreads new connections (UDP: peers, by their address) over the
sockets of the group. A socket inherited across ``fork`` would not spread anything: every process would
wait on one accept queue. The supervisor holds a *reservation* per TCP address (bound with
``SO_REUSEPORT``, never listening: it takes no connection) so that the port stays the gateway's while a
worker restarts, and so that port 0 is chosen once for every worker.

One process (``workers = 1``) does not come here: its servers bind as they always did.
"""

from __future__ import annotations

import socket
from typing import Any

from gevent import socket as gsocket

__all__ = ["REUSE_PORT", "family_of", "reserve_tcp_port", "tcp_listener"]

#: Whether this platform has SO_REUSEPORT (Linux, the BSDs, macOS; Linux spreads connections over it).
REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal (``::1``, ``::``), else AF_INET (``""`` is every IPv4 address), as
    gevent's servers choose it for an address."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp_listener(
    address: tuple[str, int], backlog: int, family: int | None = None, reuse_addr: int | None = 1
) -> Any:
    """A listening, non-blocking gevent TCP socket on ``address`` with ``SO_REUSEPORT`` (and, as gevent's
    own listener, ``SO_REUSEADDR``): one of a group of sockets on one address, one per worker process."""
    if not REUSE_PORT:
        raise OSError("SO_REUSEPORT is not available on this platform: run one worker (workers = 1)")
    sock = gsocket.socket(family if family is not None else family_of(address[0]), socket.SOCK_STREAM)
    try:
        if reuse_addr is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse_addr)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.strerror:
                exc.strerror += f": {address!r}"
            raise
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_tcp_port(host: str, port: int) -> socket.socket:
    """A plain socket bound to ``(host, port)`` with ``SO_REUSEPORT`` only, never listening: the port stays
    taken for other programs (even those with ``SO_REUSEADDR``) while the workers' listening sockets, which
    join it with ``SO_REUSEPORT``, come and go; it accepts no connection itself. ``port`` 0 picks a free
    port: ``getsockname()`` says which. OSError (EADDRINUSE) when another program holds the address."""
    if not REUSE_PORT:
        raise OSError("SO_REUSEPORT is not available on this platform: run one worker (workers = 1)")
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
