"""Client-side TLS towards a ``tls://``, ``wss://`` or ``https://`` target (``[listener.target_tls]``):
the target's certificate is verified (against ``ca_file`` or the system's CAs) and, with ``cert_file``,
the gateway presents a client certificate (upstream mTLS)."""

from __future__ import annotations

import socket
import ssl
from typing import Any

__all__ = ["client_context", "dial"]


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
    included (a PROXY protocol header). OSError (ssl.SSLError included) when it fails."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if first:
            sock.sendall(first)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_name or host)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock
