"""Raw-socket WebSocket tools for the mqtt-ws hardening and fuzz tests: an HTTP upgrade written by hand, RFC
6455 frames with every field under the test's control (opcode, FIN, RSV bits, mask, declared length), a
reader of the server's frames, the adversarial frame streams of the fuzz slice and a ping-flood attacker
run as its own process. Nothing here uses the gateway's frame codec or wsproto."""

from __future__ import annotations

import base64
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.packets import Connect, Pingreq, Publish

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

#: What a server must answer to a Close frame with an invalid code (RFC 6455 7.4.1 / 7.4.2: codes below
#: 1000, the reserved 1004-1006 and 1015, unassigned 1016-2999, and 5000 and up are never sent).
INVALID_CLOSE_CODES = (0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999)


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
    form: int | None = None,
) -> bytes:
    """One frame as a client would send it. ``length``: the declared payload length (default: the real
    one); ``form``: 7, 16 or 64 to force the length encoding; ``rsv``: the three RSV bits (0-7)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F
    bit = 0x80 if mask else 0
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    if form == 7:
        header = bytes((first, bit | n))
    elif form == 16:
        header = bytes((first, bit | 126)) + struct.pack("!H", n)
    else:
        header = bytes((first, bit | 127)) + struct.pack("!Q", n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return header + key + masked


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    body = b"" if code is None else struct.pack("!H", code) + reason
    return frame(OP_CLOSE, body)


def binary(data: bytes) -> bytes:
    return frame(OP_BINARY, data)


def mqtt_connect(client_id: str, version: int = 4, keepalive: int = 60) -> bytes:
    return codec.encode(
        Connect(
            client_id=client_id, protocol_level=version, keepalive=keepalive, username="dev1", password=b"pw1"
        ),
        version,
    )


PINGREQ = codec.encode(Pingreq(), 4)


def publish(topic: str, payload: bytes, packet_id: int = 1, version: int = 4) -> bytes:
    return codec.encode(Publish(topic, payload, qos=1, packet_id=packet_id), version)


# ======================================================================================= the upgrade


def request_head(port: int, path: str = "/mqtt", **headers: str) -> bytes:
    """A valid upgrade request; keyword arguments replace (or, with value "", drop) headers, ``_`` in a
    keyword standing for ``-``."""
    base = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "mqtt",
    }
    for key, value in headers.items():
        name = key.replace("_", "-")
        match = next((k for k in base if k.lower() == name.lower()), name)
        base.pop(match, None)
        if value:
            base[name] = value
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in base.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_exchange(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` and read the answer until the server closes: (status, headers lower-cased, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class RawWs:
    """A client connection after a raw upgrade; ``frames`` collects (opcode, payload) of what came back."""

    def __init__(self, port: int, path: str = "/mqtt", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(request_head(port, path))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during the handshake: {data!r}")
            data += chunk
        head, _, self.buf = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.frames: list[tuple[int, bytes]] = []
        self.eof = False

    def send(self, data: bytes) -> bool:
        """False when the server had already closed (a reset is a way of being cut off)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _parse(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, head = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, head = struct.unpack_from("!Q", buf, 2)[0], 10
            assert not b1 & 0x80, "a server frame must not be masked"
            if len(buf) < head + n:
                break
            self.frames.append((b0 & 0x0F, bytes(buf[head : head + n])))
            buf = buf[head + n :]
        self.buf = buf

    def read(self, limit: float, until: int = 0) -> bool:
        """Read for up to ``limit`` seconds or until the server closes TCP (True when it did); with
        ``until``, only until that many frames have come."""
        deadline = time.monotonic() + limit
        self._parse()
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
            self._parse()
            if until and len(self.frames) >= until:
                return False
        return True

    def until_close(self, limit: float = 5.0) -> int | None:
        """The close code the server sent (0: a close frame without one; None: no close frame) by the time
        it closed TCP or ``limit`` passed."""
        self.read(limit)
        return self.close_code()

    def close_code(self) -> int | None:
        for op, body in self.frames:
            if op == OP_CLOSE:
                return struct.unpack("!H", body[:2])[0] if len(body) >= 2 else 0
        return None

    def binary_payload(self) -> bytes:
        return b"".join(body for op, body in self.frames if op in (OP_BINARY, OP_CONT))

    def close(self) -> None:
        self.sock.close()


# =================================================================================== the fuzz cases


@dataclass(frozen=True)
class WsCase:
    """An adversarial frame stream sent right after the upgrade. ``codes``: the close code the gateway must
    answer with (one of them), then close; empty: no close is required (the stream is incomplete, or the
    MQTT side decides); ``connect``: a valid MQTT CONNECT (dev1) goes first."""

    name: str
    stream: bytes
    codes: frozenset[int] = field(default_factory=frozenset)
    connect: bool = True


def _case(name: str, stream: bytes, *codes: int, connect: bool = True) -> WsCase:
    return WsCase(name, stream, frozenset(codes), connect)


def ws_cases() -> list[WsCase]:
    """The targeted cases: each names the close code RFC 6455 gives it (1002 protocol error, 1003 data
    the endpoint cannot accept, 1007 invalid payload data)."""
    p = 1002
    cases = [
        *(_case(f"opcode-0x{op:x}", frame(op, b"x"), p) for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)),
        *(_case(f"rsv-{r}", frame(OP_BINARY, PINGREQ, rsv=r), p) for r in range(1, 8)),
        _case("rsv-on-ping", frame(OP_PING, b"", rsv=4), p),
        _case("unmasked-binary", frame(OP_BINARY, PINGREQ, mask=False), p),
        _case("unmasked-ping", frame(OP_PING, b"hi", mask=False), p),
        _case("unmasked-close", frame(OP_CLOSE, struct.pack("!H", 1000), mask=False), p),
        _case("fragmented-ping", frame(OP_PING, b"a", fin=False) + frame(OP_CONT, b"b"), p),
        _case("fragmented-close", frame(OP_CLOSE, b"\x03\xe8", fin=False), p),
        _case("ping-126-bytes", frame(OP_PING, b"x" * 126), p),
        _case("pong-200-bytes", frame(OP_PONG, b"x" * 200), p),
        _case("close-16bit-length", frame(OP_CLOSE, b"\x03\xe8" + b"r" * 200), p),
        _case("length-top-bit", frame(OP_BINARY, b"", length=1 << 63, form=64), p),
        _case("length-all-ones", frame(OP_BINARY, b"", length=(1 << 64) - 1, form=64), p),
        _case("ping-64bit-length", frame(OP_PING, b"", length=1 << 40, form=64), p),
        _case("continuation-first", frame(OP_CONT, PINGREQ), p),
        _case(
            "binary-inside-fragmented",
            frame(OP_BINARY, PINGREQ[:1], fin=False) + frame(OP_BINARY, PINGREQ[1:]),
            p,
        ),
        _case(
            "text-continuation-inside-binary",
            frame(OP_BINARY, PINGREQ[:1], fin=False) + frame(OP_TEXT, b"x"),
            p,
            1003,
        ),
        _case("text-frame", frame(OP_TEXT, b"hello"), 1003),
        _case("text-before-connect", frame(OP_TEXT, b"hello"), 1003, connect=False),
        _case("bad-opcode-before-connect", frame(0x3, b""), p, connect=False),
        _case("unmasked-before-connect", frame(OP_BINARY, b"\x10", mask=False), p, connect=False),
        *(_case(f"close-{c}", close_frame(c), p) for c in INVALID_CLOSE_CODES),
        _case("close-1-byte", frame(OP_CLOSE, b"\x03"), p),
        _case("close-bad-utf8", close_frame(1000, b"\xc3\x28"), 1007),
        _case("close-bad-utf8-surrogate", close_frame(1001, b"\xed\xa0\x80"), 1007),
        _case("close-truncated-utf8", close_frame(3000, b"ok \xe2\x82"), 1007),
        *(_case(f"close-valid-{c}", close_frame(c, b"bye"), c) for c in VALID_CLOSE_CODES),
        _case("close-empty", close_frame(None), 1000),
        _case("close-then-garbage", close_frame(1000) + b"\xff" * 20, 1000),
        _case("ping-flood-then-close", frame(OP_PING, b"p") * 5000 + close_frame(1000), 1000),
        _case("pong-unsolicited", frame(OP_PONG, b"x") + close_frame(1001), 1001),
        _case(
            "interleaved-ping-in-fragments",
            frame(OP_BINARY, PINGREQ[:1], fin=False)
            + frame(OP_PING, b"i")
            + frame(OP_CONT, PINGREQ[1:])
            + close_frame(1000),
            1000,
        ),
        _case("empty-binary-frames", frame(OP_BINARY, b"") * 3000 + close_frame(1000), 1000),
        _case("huge-declared-binary-then-nothing", frame(OP_BINARY, b"\x30", length=1 << 40, form=64)),
        _case(
            "huge-connect-before-connect",
            frame(OP_BINARY, b"\x10\xff\xff\xff\x7f", length=1 << 30),
            1000,  # max_packet_size: the MQTT side refuses it, and the WebSocket closes normally
            connect=False,
        ),
        _case("non-minimal-length-forms", frame(OP_BINARY, PINGREQ, form=64) + close_frame(1000), 1000),
    ]
    return cases


def mutate(stream: bytes, rnd: random.Random) -> bytes:
    """A random mutation of a valid client stream: flipped bits, dropped, duplicated or inserted bytes."""
    data = bytearray(stream)
    for _ in range(rnd.randint(1, 4)):
        if not data:
            break
        i = rnd.randrange(len(data))
        kind = rnd.randrange(4)
        if kind == 0:
            data[i] ^= 1 << rnd.randrange(8)
        elif kind == 1:
            del data[i]
        elif kind == 2:
            data[i:i] = data[i : i + rnd.randint(1, 8)]
        else:
            data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 6)))
    return bytes(data)


def valid_stream(rnd: random.Random, topic: str) -> bytes:
    """A valid client stream after a CONNECT: pings, PINGREQs, publishes split across frames, a close."""
    parts: list[bytes] = []
    for i in range(rnd.randint(1, 6)):
        kind = rnd.randrange(3)
        if kind == 0:
            parts.append(frame(OP_PING, os.urandom(rnd.randint(0, 20))))
        elif kind == 1:
            parts.append(binary(PINGREQ))
        else:
            packet = publish(topic, os.urandom(rnd.randint(0, 300)), i + 1)
            cut = rnd.randint(1, len(packet) - 1)
            parts.append(frame(OP_BINARY, packet[:cut], fin=False) + frame(OP_CONT, packet[cut:]))
    parts.append(close_frame(1000))
    return b"".join(parts)


def run_ws_case(port: int, stream: bytes, connect: bool, limit: float) -> tuple[int | None, bool, float]:
    """Upgrade, send (CONNECT first when asked, waiting for the CONNACK) then ``stream``: (the close code
    the gateway answered with, whether it closed TCP within ``limit``, seconds until then)."""
    started = time.monotonic()
    ws = RawWs(port)
    try:
        if connect:
            ws.send(binary(mqtt_connect(f"fz-{os.urandom(4).hex()}")))
            ws.read(5, until=1)
            assert ws.binary_payload()[:1] == b"\x20", f"no CONNACK: {ws.frames!r}"
        ws.send(stream)
        closed = ws.read(limit)
        return ws.close_code(), closed, time.monotonic() - started
    finally:
        ws.close()


# ============================================================================ the ping-flood attacker

#: Run as ``python -c FLOOD_ATTACKER port path seconds frame-hex``: upgrade, then send that frame (by default
#: an empty masked ping) as fast as the socket takes it while a thread reads the answers; prints "cut
#: <seconds>" when the gateway closed the connection (or "open" when it was still open after ``seconds``)
#: and the bytes it read.
FLOOD_ATTACKER = r"""
import base64, os, socket, sys, threading, time
port, path, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
unit = bytes.fromhex(sys.argv[4]) if len(sys.argv) > 4 else b"\x89\x80\x00\x00\x00\x00"
s = socket.create_connection(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
start = time.monotonic()
state = {"cut": None, "pong": 0}
def reader():
    while True:
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if not data:
            state["cut"] = time.monotonic() - start
            return
        state["pong"] += len(data)
threading.Thread(target=reader, daemon=True).start()
batch = unit * (12000 // len(unit))
s.settimeout(0.5)
while time.monotonic() - start < seconds and state["cut"] is None:
    try:
        s.sendall(batch)
    except socket.timeout:
        continue
    except OSError:
        time.sleep(0.05)
        break
deadline = time.monotonic() + 2
while state["cut"] is None and time.monotonic() < deadline:
    time.sleep(0.01)
print("cut %.3f" % state["cut"] if state["cut"] is not None else "open", state["pong"], flush=True)
"""
