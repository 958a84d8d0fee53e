"""The upstream side of MQTT over WebSocket: a ``ws://`` or ``wss://`` target.

wsproto (sans-IO) writes the HTTP upgrade request and checks the server's answer; after the handshake the
frames go through this package's own codec (``frames.py``), like on the device side.
"""

from __future__ import annotations

import socket
import ssl

import gevent
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ferryman.protocols.tls import client as tls_client

from .stream import WebSocketStream

__all__ = ["SUBPROTOCOL", "dial_websocket"]

SUBPROTOCOL = "mqtt"
MAX_RESPONSE = 16384  # bytes of HTTP response accepted before the handshake is given up


def dial_websocket(
    host: str,
    port: int,
    path: str,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    server_name: str = "",
) -> WebSocketStream:
    """Connect (TLS with ``tls``), upgrade to WebSocket offering the ``mqtt`` subprotocol, and return the
    stream. OSError when the target is unreachable, refuses the upgrade, picks no subprotocol or has not
    answered the upgrade whole within ``timeout`` (however slowly its bytes come)."""
    sock = tls_client.dial(host, port, timeout, tls, server_name)
    try:
        sock.settimeout(timeout)
        late = TimeoutError(f"no complete WebSocket handshake answer within {timeout}s")
        with gevent.Timeout(timeout, late):
            stream = _handshake(sock, host, port, path or "/")
        sock.settimeout(None)
        return stream
    except BaseException:
        sock.close()
        raise


def _handshake(sock: socket.socket, host: str, port: int, path: str) -> WebSocketStream:
    hs = H11Handshake(ConnectionType.CLIENT)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock.sendall(hs.send(Request(host=authority, target=path, subprotocols=[SUBPROTOCOL])))
    seen = 0
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("the target closed the connection during the WebSocket handshake")
        seen += len(data)
        try:
            hs.receive_data(data)
            for event in hs.events():
                if isinstance(event, AcceptConnection):
                    if event.subprotocol != SUBPROTOCOL:
                        raise ConnectionError(f"the target accepted no {SUBPROTOCOL!r} subprotocol")
                    return WebSocketStream(sock, client=True, pending=_trailing(hs), subprotocol=SUBPROTOCOL)
                if isinstance(event, RejectConnection):
                    raise ConnectionError(
                        f"the target refused the WebSocket upgrade: HTTP {event.status_code}"
                    )
                if isinstance(event, RejectData):
                    continue
        except (LocalProtocolError, RemoteProtocolError) as exc:
            raise ConnectionError(f"WebSocket handshake with the target failed: {exc}") from None
        if seen > MAX_RESPONSE:
            raise ConnectionError("no WebSocket handshake answer within the first 16 KiB")


def _trailing(hs: H11Handshake) -> bytes:
    """Bytes that came after the 101 response in the same read (frames the target sent at once). wsproto
    hands them only to its own frame parser, so they are taken from its h11 connection (h11's public
    ``trailing_data``)."""
    h11_conn = getattr(hs, "_h11_connection", None)
    trailing = getattr(h11_conn, "trailing_data", (b"", False))
    return bytes(trailing[0])
