"""Incremental MQTT framing: cut a byte stream into whole packets without copying them.

This is the data plane's hot path. ``Framer.feed`` takes whatever one ``recv`` returned and gives back a
buffer plus the offsets of every complete packet in it; the caller inspects only the packets it must and,
when nothing changed, writes the buffer on with one ``sendall``. A remaining length beyond the configured
maximum packet size is rejected as soon as its fixed header is read, before the body is buffered.

``Framer.feed_runs`` (the proxy's pumps) also reports runs: many packets in a row with the same fixed
header (type, flags and remaining length), found by comparing headers in C (``runs.py``) instead of
stepping through each, and given as one ``Run`` for the caller to judge as a block.
"""

from __future__ import annotations

from typing import cast

from .errors import MalformedPacket, PacketTooLarge
from .runs import RUN_MIN, RUN_RETRY, run_length

__all__ = ["MAX_REMAINING_LENGTH", "Frame", "Framer", "Run", "encode_remaining_length"]

MAX_REMAINING_LENGTH = 268_435_455

# (start, body, end): buf[start] is the first byte, buf[body:end] the variable header and payload.
Frame = tuple[int, int, int]
# (start, body, end, size): packets of ``size`` bytes from start to end, all with the fixed header of the
# first; body is the first packet's variable header.
Run = tuple[int, int, int, int]


def encode_remaining_length(n: int) -> bytes:
    """``n`` as an MQTT Variable Byte Integer (1.5.5): the Remaining Length, property lengths and values."""
    if n < 0 or n > MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} out of range")
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


class Framer:
    """Splits a stream into MQTT packets.

    ``max_packet_size`` bounds the whole packet (fixed header included), as MQTT 5's Maximum Packet Size does.
    """

    __slots__ = ("_have", "_need", "_parts", "_pending", "_retry", "copied", "last_runs", "max_packet_size")

    #: An incomplete packet longer than this is collected piece by piece and joined once, when whole.
    COLLECT_ABOVE = 65536

    def __init__(self, max_packet_size: int = MAX_REMAINING_LENGTH + 5) -> None:
        self.max_packet_size = max_packet_size
        self._pending = b""
        # A large packet still arriving: its pieces, how many bytes are there, how many it needs.
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0
        self.copied = 0  # bytes copied into joined buffers: stays linear in the bytes fed (tested)
        self._retry = 0  # packets to step through before looking for a run again
        self.last_runs = 0  # how many of the frames the last feed_runs returned are runs

    @property
    def buffered(self) -> int:
        """Bytes held back as an incomplete packet."""
        return len(self._pending) + self._have

    def feed(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Add ``data``; return ``(buf, frames)`` where every frame is a whole packet inside ``buf``.

        Bytes after the last whole packet stay buffered for the next call. ``buf[:frames[-1][2]]`` is the
        exact byte sequence of the returned packets (``buf`` may be longer).
        Raises ``PacketTooLarge`` or ``MalformedPacket``; the stream is then unusable.
        """
        return cast(tuple[bytes, list[Frame]], self._feed(data, False))

    def feed_runs(self, data: bytes) -> tuple[bytes, list[Frame | Run]]:
        """``feed``, with runs of at least RUN_MIN packets of one fixed header given as a ``Run`` each."""
        return self._feed(data, True)

    def _feed(self, data: bytes, find_runs: bool) -> tuple[bytes, list[Frame | Run]]:
        self.last_runs = 0
        if self._parts:
            # Without this, a client trickling a large packet a byte per segment made every read copy all
            # that was buffered so far: quadratic CPU (0.44 core for one client, found by the fuzzer).
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return b"", []
            buf = b"".join(self._parts)
            self.copied += len(buf)
            self._parts, self._have, self._need = [], 0, 0
        elif self._pending:
            buf = self._pending + data
            self.copied += len(buf)
        else:
            buf = data
        n = len(buf)
        frames: list[Frame | Run] = []
        pos = 0
        limit = self.max_packet_size
        while pos < n:
            # Remaining length: up to four bytes, seven bits each (MQTT 2.2.3).
            if pos + 1 >= n:
                break
            b = buf[pos + 1]
            if b < 0x80:
                length = b
                body = pos + 2
            else:
                length = b & 0x7F
                mult = 128
                i = pos + 2
                complete = False
                while i < n and i < pos + 5:
                    b = buf[i]
                    length += (b & 0x7F) * mult
                    i += 1
                    if b < 0x80:
                        complete = True
                        break
                    mult *= 128
                if not complete:
                    if i >= pos + 5:
                        raise MalformedPacket("remaining length longer than four bytes")
                    break  # header not complete yet
                if i - pos - 1 > 1 and b == 0:
                    # A zero final byte in a multi-byte encoding is a non-minimal encoding (MQTT 1.5.5).
                    raise MalformedPacket("remaining length not minimally encoded")
                body = i
            end = body + length
            if end - pos > limit:
                raise PacketTooLarge(f"packet of {end - pos} bytes exceeds the maximum of {limit}")
            if end > n:
                if end - pos > self.COLLECT_ABOVE:
                    self._parts = [buf[pos:]]
                    self._have = n - pos
                    self._need = end - pos
                    self._pending = b""
                    return buf, frames
                break
            if find_runs and n - pos >= RUN_MIN * (end - pos):
                if self._retry:
                    self._retry -= 1
                else:
                    size = end - pos
                    count = run_length(buf, pos, n, size, body - pos)
                    if count:
                        self.last_runs += 1
                        frames.append((pos, body, pos + count * size, size))
                        pos += count * size
                        continue
                    self._retry = RUN_RETRY
            frames.append((pos, body, end))
            pos = end
        self._pending = buf[pos:] if pos < n else b""
        return buf, frames
