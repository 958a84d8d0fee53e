"""RFC 6455 frames on the data plane: a streaming decoder and the two encoders MQTT needs.

The decoder is fed whatever ``recv`` returned and hands back the binary payload bytes it held, joined,
unmasked, in order, without waiting for a frame (or an MQTT packet) to be whole: MQTT rides on the byte
stream, not on frame boundaries (MQTT 5.0 §6), and a large frame costs no more memory than one read.

Why not gevent-websocket's or wsproto's frame reader: both step through Python per frame and per byte of
work (gevent-websocket unmasks in a Python loop, one byte at a time), and an MQTT client sends one frame
per packet. Here a read of mixed frames costs one short Python step per frame header and one vector XOR
for all their payloads; a run of frames of one shape (a device flooding one topic, a broker delivering
one size of message) is checked, unmasked and stripped as a block (``protocols/mqtt/runs.py``) with no
Python step per frame at all. See bench/ws_throughput.py and docs/websocket.md for the figures.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from ferryman.protocols.mqtt import runs

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameDecoder",
    "FrameError",
    "close_answer",
    "close_payload",
    "encode_frame",
    "unmask",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
_DATA_OPCODES = (OP_CONTINUATION, OP_BINARY)
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class FrameError(Exception):
    """The peer broke RFC 6455 or sent what MQTT over WebSocket does not allow; ``code`` is the close code
    to answer with."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


SMALL = 256  # bytes: below this a big-integer XOR beats numpy's call overhead


def unmask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``key`` (RFC 6455 §5.3), in C either way."""
    n = len(data)
    if n >= SMALL:
        return runs.unmask(data, key)
    if not n:
        return b""
    keys = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, mask: bool = False) -> bytes:
    """One final frame. Servers send unmasked frames; clients must mask theirs (``mask=True``)."""
    n = len(payload)
    first = 0x80 | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        header = bytes((first, bit | n))
    elif n < 65536:
        header = bytes((first, bit | 126)) + _U16.pack(n)
    else:
        header = bytes((first, bit | 127)) + _U64.pack(n)
    if mask:
        key = os.urandom(4)
        return header + key + unmask(payload, key)
    return header + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's body: the code and at most 120 bytes of reason, cut between UTF-8 characters (a
    control frame holds 125 bytes, and the reason must stay valid UTF-8)."""
    raw = reason.encode()
    if len(raw) > 120:
        raw = raw[:120].decode("utf-8", "ignore").encode()
    return _U16.pack(code) + raw


def valid_close_code(code: int) -> bool:
    """A code a peer may send in a close frame (RFC 6455 7.4.1, 7.4.2 and the IANA registry): 1000-1003,
    1007-1014 and the ranges for libraries and applications, 3000-4999. 1004-1006 and 1015 are reserved
    (never sent), the rest of 0-2999 is unassigned, 5000 and up undefined."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_answer(body: bytes) -> tuple[int, str]:
    """The close code (and reason) to answer a peer's close frame body with: its code echoed; 1000 when
    it gave none; 1002 (protocol error) for a 1-byte body or an invalid code; 1007 (invalid payload
    data) for a reason that is not UTF-8 (RFC 6455 5.5.1, 7.4, 8.1)."""
    if not body:
        return CLOSE_NORMAL, ""
    if len(body) == 1:
        return CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte body"
    code = _U16.unpack_from(body)[0]
    if not valid_close_code(code):
        return CLOSE_PROTOCOL_ERROR, f"invalid close code {code}"
    try:
        body[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8"
    return code, ""


class FrameDecoder:
    """Decodes one direction of a WebSocket connection.

    ``feed(data)`` returns the binary payload bytes the data completed or continued, and appends the
    control frames it met to ``control`` as (opcode, payload) for the caller to answer. Text frames and
    protocol violations raise :class:`FrameError`. ``masked``: frames from a client must be masked, frames
    from a server must not (RFC 6455 §5.1). After a close frame nothing more is decoded (``closed``): what
    follows it is not part of the conversation (§5.5.1). The work of one ``feed`` is one pass over its
    bytes: a short Python step per frame header, none per payload byte.
    """

    __slots__ = ("_fragmented", "_key", "_left", "_pending", "_retry", "closed", "control", "masked")

    def __init__(self, masked: bool) -> None:
        self.masked = masked
        self.control: list[tuple[int, bytes]] = []
        self._pending = b""  # an incomplete frame header (or control frame) carried to the next feed
        self._left = 0  # payload bytes of the current data frame still to come
        self._key = b""  # its masking key, rotated to where the payload continues
        self._fragmented = False  # inside a binary message whose last frame has not come yet
        self._retry = 0  # frames to step through before looking for a run again
        self.closed = False  # a close frame came: the rest is not read

    def feed(self, data: bytes) -> bytes:
        if self.closed:
            return b""
        buf = self._pending + data if self._pending else data
        n = len(buf)
        pos = 0
        out: list[bytes] = []  # payload bytes ready to hand on
        payloads: list[bytes] = []  # payloads of frames stepped through, not unmasked yet
        keys: list[bytes] = []  # the masking key stream aligned with payloads (masked side only)
        masked = self.masked
        if self._left:
            take = min(self._left, n)
            payloads.append(buf[:take])
            if masked:
                key = self._key
                keys.append((key * ((take >> 2) + 1))[:take])
                rot = take & 3
                self._key = key[rot:] + key[:rot]
            self._left -= take
            pos = take
        while pos < n:
            if n - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = _U64.unpack_from(buf, pos + 2)[0]
                if length >> 63:
                    raise FrameError("frame length with the most significant bit set")
                head = 10
            if bool(b1 & 0x80) != masked:
                raise FrameError("client frame not masked" if masked else "server frame masked")
            key = b""
            if masked:
                if n - pos < head + 4:
                    break
                key = buf[pos + head : pos + head + 4]
                head += 4
            if b0 & 0x70:
                raise FrameError("reserved bits set (no extension was negotiated)")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            start = pos + head
            if opcode in _DATA_OPCODES:
                if (opcode == OP_CONTINUATION) != self._fragmented:
                    raise FrameError(
                        "continuation frame out of place" if opcode == 0 else "frame inside a message"
                    )
                self._fragmented = not fin
                size = head + length
                if b0 == 0x82 and length < 65536 and n - pos >= runs.RUN_MIN * size:
                    if self._retry > 0:
                        self._retry -= 1
                    else:
                        count = runs.run_length(buf, pos, n, size, head - 4 if masked else head)
                        if count:
                            _settle(payloads, keys, out, masked)
                            out.append(
                                runs.masked_payloads(buf, pos, size, count, head)
                                if masked
                                else runs.rows(buf, pos, size, count)[:, head:].tobytes()
                            )
                            pos += count * size
                            continue
                        self._retry = runs.RUN_RETRY
                take = min(length, n - start)
                payloads.append(buf[start : start + take])
                if masked:
                    keys.append((key * ((take >> 2) + 1))[:take])
                pos = start + take
                if take < length:
                    self._left = length - take
                    rot = take & 3
                    self._key = key[rot:] + key[:rot]
                continue
            if opcode == OP_TEXT:
                raise FrameError("text frame: MQTT travels in binary frames only", CLOSE_UNSUPPORTED_DATA)
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(f"unknown opcode 0x{opcode:x}")
            if not fin or length > 125:
                raise FrameError("fragmented or oversized control frame")
            if n - start < length:
                break  # control frames are answered whole
            body = buf[start : start + length]
            self.control.append((opcode, unmask(body, key) if masked else body))
            pos = start + length
            if opcode == OP_CLOSE:
                self.closed = True
                pos = n
                break
        self._pending = buf[pos:] if pos < n else b""
        _settle(payloads, keys, out, masked)
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)


def _settle(payloads: list[bytes], keys: list[bytes], out: list[bytes], masked: bool) -> None:
    """Move the payloads stepped through so far to ``out``, unmasked with their key stream."""
    if not payloads:
        return
    joined = payloads[0] if len(payloads) == 1 else b"".join(payloads)
    payloads.clear()
    if masked:
        joined = _xor(joined, b"".join(keys))
        keys.clear()
    out.append(joined)


def _xor(data: bytes, keys: bytes) -> bytes:
    n = len(data)
    if n >= SMALL:
        return (np.frombuffer(data, np.uint8) ^ np.frombuffer(keys, np.uint8)).tobytes()
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")
