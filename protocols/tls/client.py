"""Client-side TLS towards a ``tls://``, ``wss://`` or ``https://`` target (``[listener.target_tls]``):
the target's certificate is verified (against ``ca_file`` or the system's CAs) and, with ``cert_file``,
the gateway presents a client certificate (upstream mTLS)."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

__all__ = ["client_context", "dial", "target_addresses"]

#: Seconds a target name's addresses are reused before the next dial resolves it again.
RESOLVE_TTL = 30.0
_MAX_NAMES = 256
_resolved: dict[tuple[str, int], tuple[float, list[tuple[int, tuple[Any, ...]]]]] = {}


def client_context(target_tls: Any | None) -> ssl.SSLContext:
    """A verifying TLS 1.2+ client context; ``target_tls`` may be None (system CAs, no client cert)."""
    ctx = ssl.create_default_context(cafile=(target_tls.ca_file or None) if target_tls else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if target_tls is not None and target_tls.cert_file:
        ctx.load_cert_chain(target_tls.cert_file, target_tls.key_file)
    return ctx


def dial(
    host: str,
    port: int,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    server_name: str = "",
    first: bytes = b"",
) -> socket.socket:
    """A connected TCP socket (TCP_NODELAY, blocking), wrapped in TLS when ``tls`` is given; the
    handshake is done within ``timeout``. ``first``: bytes sent before anything else, the TLS handshake
    included (a PROXY protocol header). OSError (ssl.SSLError included) when it fails. A name with
    several addresses is tried address by address, as ``socket.create_connection`` does."""
    sock = _connect(host, port, timeout)
    try:
        if first:
            sock.sendall(first)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_name or host)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    error: OSError | None = None
    for family, address in target_addresses(host, port):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    _resolved.pop((host, port), None)  # the name may point elsewhere now
    assert error is not None
    raise error


def target_addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """The (address family, socket address) pairs to try, in order, to connect to ``host:port``.

    A numeric address is used as it is: no resolver is asked (``socket.create_connection`` asks
    ``getaddrinfo`` on every call, which under gevent is a hop to its thread pool: about a quarter of the
    gateway's CPU per proxied MQTT connect, bench/mqtt_connect_rate.py). A name is resolved at its first
    dial and its addresses reused for ``RESOLVE_TTL`` seconds, or until no connect to them succeeds."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, (host, port))]
    now = time.monotonic()
    known = _resolved.get((host, port))
    if known is not None and known[0] > now:
        return known[1]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host!r} has no address")
    addresses = [(int(family), tuple(address)) for family, _, _, _, address in infos]
    if len(_resolved) >= _MAX_NAMES:
        _resolved.clear()
    _resolved[(host, port)] = (now + RESOLVE_TTL, addresses)
    return addresses
