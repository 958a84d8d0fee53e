"""A small CoAP message codec (RFC 7252 §3) for the listeners' fast paths.

aiocoap decodes every datagram into a ``Message`` with an options object, runs its message and request
layers and a task per request: most of the gateway's CPU per CoAP request (bench/coap_publish.py). The fast
paths (``FastPath`` below) read the few fields they need with :func:`parse` and answer with
:func:`encode`; every datagram they do not take whole goes to aiocoap unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACK",
    "BLOCK1",
    "BLOCK2",
    "CON",
    "CONTENT_FORMAT",
    "NON",
    "OBSERVE",
    "RST",
    "URI_PATH",
    "URI_QUERY",
    "Datagram",
    "FastPath",
    "code",
    "encode",
    "parse",
]

CON, NON, ACK, RST = 0, 1, 2, 3

# Option numbers (RFC 7252 §5.10, RFC 7641, RFC 7959)
IF_MATCH, URI_HOST, ETAG, IF_NONE_MATCH, OBSERVE, URI_PORT = 1, 3, 4, 5, 6, 7
LOCATION_PATH, URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT = 8, 11, 12, 14, 15, 17
LOCATION_QUERY, BLOCK2, BLOCK1, SIZE2, PROXY_URI, PROXY_SCHEME, SIZE1 = 20, 23, 27, 28, 35, 39, 60

#: What a fast path may receive: (datagram bytes, the peer's socket address, a function sending bytes back to
#: it) -> True when it took the datagram (answered it or will), False to leave it to aiocoap.
FastPath = Callable[[bytes, Any, Callable[[bytes], None]], bool]


def code(cls: int, detail: int) -> int:
    """``code(2, 4)`` is 2.04 Changed."""
    return (cls << 5) | detail


@dataclass(slots=True)
class Datagram:
    mtype: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]]  # (number, value) in the order received (ascending numbers)
    payload: bytes

    def option(self, number: int) -> bytes | None:
        for n, value in self.options:
            if n == number:
                return value
        return None

    def all(self, number: int) -> list[bytes]:
        return [value for n, value in self.options if n == number]


def parse(data: bytes) -> Datagram | None:
    """The message, or None when it is not a well-formed CoAP message (version 1)."""
    n = len(data)
    if n < 4:
        return None
    b0 = data[0]
    if b0 >> 6 != 1:
        return None
    tkl = b0 & 0x0F
    if tkl > 8 or n < 4 + tkl:
        return None
    pos = 4 + tkl
    options: list[tuple[int, bytes]] = []
    number = 0
    while pos < n:
        head = data[pos]
        if head == 0xFF:
            pos += 1
            if pos == n:
                return None  # a payload marker with no payload is a format error
            break
        pos += 1
        delta, length = head >> 4, head & 0x0F
        if delta == 13:
            if pos >= n:
                return None
            delta = data[pos] + 13
            pos += 1
        elif delta == 14:
            if pos + 1 >= n:
                return None
            delta = ((data[pos] << 8) | data[pos + 1]) + 269
            pos += 2
        elif delta == 15:
            return None
        if length == 13:
            if pos >= n:
                return None
            length = data[pos] + 13
            pos += 1
        elif length == 14:
            if pos + 1 >= n:
                return None
            length = ((data[pos] << 8) | data[pos + 1]) + 269
            pos += 2
        elif length == 15:
            return None
        if pos + length > n:
            return None
        number += delta
        options.append((number, data[pos : pos + length]))
        pos += length
    return Datagram(b0 >> 4 & 3, data[1], (data[2] << 8) | data[3], data[4 : 4 + tkl], options, data[pos:])


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode(
    mtype: int,
    code_: int,
    mid: int,
    token: bytes = b"",
    options: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...] = (),
    payload: bytes = b"",
) -> bytes:
    """One CoAP message; ``options`` in ascending option number order."""
    out = bytearray((0x40 | (mtype << 4) | len(token), code_, mid >> 8 & 0xFF, mid & 0xFF))
    out += token
    last = 0
    for number, value in options:
        d, dext = _nibble(number - last)
        ln, lext = _nibble(len(value))
        out.append((d << 4) | ln)
        out += dext
        out += lext
        out += value
        last = number
    if payload:
        out.append(0xFF)
        out += payload
    return bytes(out)


def uint(value: int) -> bytes:
    """An option's unsigned integer value in the fewest bytes (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
