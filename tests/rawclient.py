"""A small blocking MQTT client over a raw socket, for assertions on exact packets and reason codes.

Independent clients (paho-mqtt, mosquitto_pub/sub) check the gateway too; this one exists because they
hide the reason codes the proxy must get right.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from typing import Any

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.framing import Framer
from ferryman.protocols.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)


class Closed(Exception):
    pass


class RawClient:
    def __init__(self, port: int, version: int = 4, timeout: float = 5.0, source: str | None = None) -> None:
        self.version = version
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.framer = Framer()
        self.inbox: list[Any] = []
        self._pid = 0

    def next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    def send(self, packet: Any) -> None:
        self.sock.sendall(codec.encode(packet, self.version))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> Any:
        """The next packet; raises Closed when the server closed the connection."""
        self.sock.settimeout(timeout)
        while not self.inbox:
            data = self.sock.recv(65536)
            if not data:
                raise Closed("connection closed by the server")
            buf, frames = self.framer.feed(data)
            for start, body, end in frames:
                self.inbox.append(codec.decode(buf[start], buf[body:end], self.version))
        return self.inbox.pop(0)

    def expect(self, cls: type, timeout: float = 5.0) -> Any:
        packet = self.recv(timeout)
        assert isinstance(packet, cls), f"expected {cls.__name__}, got {packet!r}"
        return packet

    def closed_within(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (packets before the close are kept in the inbox)."""
        got: list[Any] = []
        try:
            while True:
                got.append(self.recv(timeout))
        except Closed:
            return True
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            self.inbox[:0] = got

    def drain(self, timeout: float = 0.5) -> list[Any]:
        """Every packet that arrives within ``timeout`` (plus any already received)."""
        got, self.inbox = self.inbox, []
        try:
            while True:
                got.append(self.recv(timeout))
        except (TimeoutError, Closed, OSError):
            return got

    def connect(
        self,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        will: Will | None = None,
        clean: bool = True,
        properties: list[tuple[int, object]] | None = None,
        keepalive: int = 60,
    ) -> Connack:
        self.send(
            Connect(
                client_id=client_id,
                protocol_level=self.version,
                clean_start=clean,
                keepalive=keepalive,
                username=username,
                password=password.encode() if password is not None else None,
                will=will,
                properties=properties or [],
            )
        )
        connack: Connack = self.expect(Connack)
        return connack

    def subscribe(self, *filters: str, qos: int = 0) -> Suback:
        pid = self.next_pid()
        self.send(Subscribe(pid, [Subscription(f, qos) for f in filters]))
        suback: Suback = self.expect(Suback)
        assert suback.packet_id == pid
        return suback

    def unsubscribe(self, *filters: str) -> Unsuback:
        pid = self.next_pid()
        self.send(Unsubscribe(pid, list(filters)))
        unsuback: Unsuback = self.expect(Unsuback)
        return unsuback

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, **kw: Any) -> Any:
        pid = self.next_pid() if qos else None
        self.send(Publish(topic, payload, qos=qos, retain=retain, packet_id=pid, **kw))
        if qos == 1:
            return self.expect(Puback)
        if qos == 2:
            rec = self.expect(Pubrec)
            if rec.reason_code >= 0x80:
                return rec
            self.send(Pubrel(rec.packet_id))
            return self.expect(Pubcomp)
        return None

    def disconnect(self) -> None:
        with contextlib.suppress(OSError):
            self.send(Disconnect())
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def spy(port: int, topic_filter: str) -> RawClient:
    """A client connected straight to the broker on ``port``, subscribed at QoS 1: what got through."""
    c = RawClient(port, version=5)
    assert c.connect(f"spy-{uuid.uuid4().hex[:8]}").reason_code == 0
    assert c.subscribe(topic_filter, qos=1).reason_codes == [1]
    return c
