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
    "fit",
    "parse",
    "screen",
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


#: Options one message may carry at most (a message with more is refused, see :func:`screen`): the parse
#: loop is bounded however the datagram is made (aiocoap reads at most 4,096 bytes of one).
MAX_OPTIONS = 256


def parse(data: bytes) -> Datagram | None:
    """The message, or None when it is not a well-formed CoAP message (version 1): too short, a reserved
    token length (9-15), an option with the reserved nibble 15, one running past the end, option numbers
    past 65535, a payload marker without a payload (RFC 7252 section 3), or more than :data:`MAX_OPTIONS`
    options.

    The last datagram parsed is remembered: :func:`screen` and a fast path parse the same bytes once."""
    global _last
    last = _last
    if last[0] is data:
        return last[1]
    msg = _parse(data)
    _last = (data, msg)
    return msg


_last: tuple[bytes | None, Datagram | None] = (None, None)


def _parse(data: bytes) -> Datagram | None:
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
        if number > 0xFFFF:
            return None  # option numbers are 16 bits (RFC 7252 12.2): extended deltas overflowed
        options.append((number, data[pos : pos + length]))
        if len(options) > MAX_OPTIONS:
            return None
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


# -- the screen every datagram passes first ---------------------------------------------------------------

#: Options that may appear once only and are critical (RFC 7252 5.10, RFC 7641, RFC 7959), with their
#: value length range: a second occurrence, or a length outside the range, is an unrecognized critical
#: option (RFC 7252 5.4.3, 5.4.5): 4.02 Bad Option.
_ONCE_CRITICAL = {
    URI_HOST: (1, 255),
    IF_NONE_MATCH: (0, 0),
    URI_PORT: (0, 2),
    ACCEPT: (0, 2),
    BLOCK2: (0, 3),
    BLOCK1: (0, 3),
    PROXY_URI: (1, 1034),
    PROXY_SCHEME: (1, 255),
}
#: Repeatable critical options and their value length range (RFC 7252 5.10).
_REPEATABLE_CRITICAL = {IF_MATCH: (0, 8), URI_PATH: (0, 255), URI_QUERY: (0, 255)}
BAD_REQUEST, BAD_OPTION = 0x80, 0x82  # 4.00, 4.02


def screen(data: bytes, mid_source: Callable[[], int] | None = None) -> tuple[bool, bytes | None]:
    """What to do with a datagram before anything else reads it: ``(True, None)`` to pass it on (to a
    fast path or aiocoap), else ``(False, answer)`` with the answer to send back (None: nothing).

    - Not CoAP version 1, or shorter than a header: ignored (RFC 7252 3).
    - A message format error (:func:`parse` gives None: token length 9-15, option nibble 15, an option past
      the end, a payload marker without payload, too many options), a reserved code class (1, 6, 7), an
      Empty message with anything after its header, an Empty NON, an ACK or RST carrying a request:
      a CON is rejected with a Reset, anything else is ignored (RFC 7252 4.2, 4.3).
    - A request whose Block1 / Block2 has the reserved SZX 7: 4.00 Bad Request (RFC 7959 2.2).
    - A request with a critical option the gateway does not know (OSCORE, Q-Block, EDHOC, unassigned
      odd numbers), one repeated that may appear once, or one whose length is out of its range (a Block
      option over 3 bytes, ...): 4.02 Bad Option to a CON, a NON is ignored (RFC 7252 5.4.1, 5.4.3, 5.4.5).

    Every answer made here is the header and token of the request at most (no options, no payload): never
    larger than the request. ``mid_source`` gives the message id of a NON answer."""
    n = len(data)
    if n < 4 or data[0] >> 6 != 1:
        return False, None
    mtype = data[0] >> 4 & 3
    code_ = data[1]
    con = mtype == CON
    reset = _reset(data) if con else None
    msg = parse(data)
    if msg is None:
        return False, reset
    cls = code_ >> 5
    if code_ == 0:
        if n > 4 or mtype == NON:
            return False, reset
        return True, None  # a CoAP ping (aiocoap answers RST), an ACK or an RST
    if cls in (1, 6, 7):
        return False, reset
    if cls != 0:
        if mtype == RST:
            return False, None
        return True, None  # a response (e.g. to a notification): aiocoap's
    if mtype >= ACK:
        return False, None
    problem = _request_problem(msg.options)
    if problem is None:
        return True, None
    if con:
        return False, encode(ACK, problem, msg.mid, msg.token)
    if problem == BAD_OPTION or mid_source is None:
        return False, None
    return False, encode(NON, problem, mid_source(), msg.token)


def _reset(data: bytes) -> bytes:
    return bytes((0x70, 0, data[2], data[3]))


def _request_problem(options: list[tuple[int, bytes]]) -> int | None:
    seen: set[int] = set()
    szx7 = False
    for number, value in options:
        limits = _ONCE_CRITICAL.get(number)
        if limits is not None:
            if number in seen:
                return BAD_OPTION
            seen.add(number)
        else:
            limits = _REPEATABLE_CRITICAL.get(number)
            if limits is None:
                if number & 1:
                    return BAD_OPTION  # a critical option the gateway does not know (RFC 7252 5.4.1)
                continue
        if not limits[0] <= len(value) <= limits[1]:
            return BAD_OPTION
        if number in (BLOCK1, BLOCK2) and value and value[-1] & 7 == 7:
            szx7 = True
    return BAD_REQUEST if szx7 else None


def fit(payload: bytes, room: int) -> bytes:
    """``payload`` (UTF-8 text) cut to at most ``room`` bytes, at a character boundary; empty when less
    than a byte fits."""
    if len(payload) <= room:
        return payload
    if room <= 0:
        return b""
    return payload[:room].decode("utf-8", "ignore").encode("utf-8")


def answer_room(request_size: int, token: bytes, options: int = 0) -> int:
    """How many payload bytes an answer with ``token`` and ``options`` bytes of options may carry and stay
    within ``request_size`` bytes (the header, the token, the options and the payload marker)."""
    return request_size - 4 - len(token) - options - 1
