"""A raw WebSocket client for the mqtt-ws tests, built on wsproto (independent of the gateway's own frame
codec): the exact handshake answer, frames of any kind, and the MQTT packets inside binary frames."""

from __future__ import annotations

import socket
import ssl
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.framing import Framer
from ferryman.protocols.mqtt.packets import Connack, Connect


def http_get(port: int, path: str, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, str]:
    """(status code, body) of one raw HTTP/1.1 request: what a refused upgrade answers."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


class WsClient:
    """A WebSocket connection to the gateway; ``subprotocol`` is what the server chose (None: refused,
    ``status`` then holds the HTTP status)."""

    def __init__(
        self,
        port: int,
        path: str = "/mqtt",
        subprotocols: tuple[str, ...] = ("mqtt",),
        origin: str | None = None,
        tls: ssl.SSLContext | None = None,
        timeout: float = 5.0,
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock: Any = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        headers = [(b"Origin", origin.encode())] if origin else []
        request = Request(
            host=f"127.0.0.1:{port}", target=path, subprotocols=list(subprotocols), extra_headers=headers
        )
        self.sock.sendall(self.ws.send(request))
        self.subprotocol: str | None = None
        self.status = 0
        self.framer = Framer()
        self.pending: list[Event] = []
        self.packets: list[Any] = []
        while not self.status:
            for event in self._read():
                if isinstance(event, AcceptConnection):
                    self.subprotocol, self.status = event.subprotocol, 101
                elif isinstance(event, RejectConnection):
                    self.status = event.status_code
                elif not isinstance(event, RejectData):
                    self.pending.append(event)

    def _read(self) -> list[Event]:
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def events(self) -> list[Event]:
        """The next events (at least one); a dropped connection shows as CloseConnection 1006."""
        if self.pending:
            out, self.pending = self.pending, []
            return out
        while True:
            try:
                got = self._read()
            except OSError:
                return [CloseConnection(1006)]
            if got:
                return got

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(BytesMessage(data)))

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(text)))

    def send(self, packet: Any, version: int) -> None:
        self.send_bytes(codec.encode(packet, version))

    def packets_until_close(self, version: int, limit: float = 5.0) -> tuple[list[Any], int | None]:
        """MQTT packets received until the WebSocket closes, and the close code (None: not closed)."""
        self.sock.settimeout(limit)
        packets, self.packets = self.packets, []
        while True:
            try:
                events = self.events()
            except TimeoutError:
                return packets, None
            for event in events:
                if isinstance(event, BytesMessage):
                    buf, frames = self.framer.feed(bytes(event.data))
                    packets += [codec.decode(buf[s], buf[b:e], version) for s, b, e in frames]
                elif isinstance(event, CloseConnection):
                    return packets, event.code

    def next_packet(self, version: int) -> Any:
        """The next MQTT packet (frames may hold several, or part of one)."""
        while not self.packets:
            for event in self.events():
                if isinstance(event, BytesMessage):
                    buf, frames = self.framer.feed(bytes(event.data))
                    self.packets += [codec.decode(buf[s], buf[b:e], version) for s, b, e in frames]
                elif isinstance(event, CloseConnection) and not self.packets:
                    raise ConnectionError(f"closed with {event.code}")
        return self.packets.pop(0)

    def mqtt_connect(
        self, client_id: str, version: int, user: str = "dev1", password: str = "pw1"
    ) -> Connack:
        self.send(
            Connect(client_id=client_id, protocol_level=version, username=user, password=password.encode()),
            version,
        )
        connack = self.next_packet(version)
        assert isinstance(connack, Connack)
        return connack

    def close(self) -> None:
        self.sock.close()
