"""Block-wise state of the coap listener, in both modes: the one owner of the uploads being assembled from
Block1 blocks (:class:`Block1Assembler`, publish and proxy mode) and of the responses served to clients
in Block2 blocks (:class:`Block2Store`, proxy mode). Nothing block-wise is left to aiocoap's server side.

Block1 (RFC 7959 2.5): a block 0 starts an upload (an unfinished one under the same key is dropped); each
later block must continue it where it stands (its start is the bytes so far: out of sequence, a lost block
or a block size changed without renumbering is 4.08 Request Entity Incomplete, as is a block with no
upload begun), and a block that says more must be full (4.00 otherwise). Each block but the last is
answered 2.31 Continue with its Block1 option; the last gives the whole payload. Uploads are kept
``MAX_TRANSMIT_WAIT`` after their last block, at most ``UPLOADS_MAX`` of them (the oldest go first), and
counted in ``ferryman_coap_proxy_state{kind="block1"}`` in proxy mode.

Block2:

A response too large for one datagram (the target's answer reassembled, or a notification) is kept whole
here and served block by block (RFC 7959 2.4) to whichever transport gets the client's request for a later
block: the datagram transport (``proxy_fast.py``) takes a plain GET for a later block itself when the
response is kept here, aiocoap's (``proxy.py``) serves the others (and everything on a DTLS listener).
A transfer therefore starts and ends in this one store, whoever read the datagrams.

Responses are kept as plain (code, options, payload) and keyed by the client's (host, port), the request
code and the request's cache-key options (RFC 7252 5.4.2: those not marked NoCacheKey), Block1, Block2 and
Observe left out, so every block request of one transfer finds the same entry. An entry leaves when its
last block is served, ``MAX_TRANSMIT_WAIT`` (93 s) after its last use, or when more than ``BLOCKS_MAX`` are
kept (the oldest first). ``ferryman_coap_proxy_state{kind}`` counts them: ``fast_block2`` for transfers the
datagram transport started, ``block2`` for aiocoap's.

Uploads in blocks never take a datagram transport: aiocoap's path reads them, this module assembles them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiocoap
from aiocoap.message import Direction
from aiocoap.numbers.codes import Code

from .auth import refusal_message
from .codec import ACK, BLOCK1, BLOCK2, OBSERVE, SIZE1, SIZE2, encode, uint

__all__ = [
    "BLOCKS_MAX",
    "MAX_TRANSMIT_WAIT",
    "UPLOADS_MAX",
    "Block",
    "Block1Assembler",
    "Block2Store",
    "as_message",
    "cache_key",
    "message_key",
    "outgoing",
]

MAX_TRANSMIT_WAIT = 93.0
BLOCKS_MAX = 64
UPLOADS_MAX = 1024
#: Options of the target -> gateway hop, never part of a kept response.
RESPONSE_HOP = frozenset({OBSERVE, BLOCK1, BLOCK2, SIZE1, SIZE2})
_KEY_IGNORED = frozenset({BLOCK1, BLOCK2, OBSERVE})

Options = list[tuple[int, bytes]]
#: One block as it is answered: (code, options with Block2, payload).
Block = tuple[int, Options, bytes]


def cache_key(host_port: tuple[str, int], code: int, options: Iterable[tuple[int, bytes]]) -> tuple[Any, ...]:
    """The key of a transfer: the same for every block request of it."""
    kept = tuple((n, v) for n, v in options if n not in _KEY_IGNORED and n & 0x1E != 0x1C)
    return (host_port, int(code), kept)


def options_of(message: aiocoap.Message) -> Options:
    """An aiocoap message's options as (number, encoded value), in order."""
    return [(int(o.number), bytes(o.encode())) for o in message.opt.option_list()]


def message_key(remote: tuple[str, int], message: aiocoap.Message) -> tuple[Any, ...]:
    """:func:`cache_key` of a request read by aiocoap."""
    return cache_key(remote, int(message.code), options_of(message))


class Block1Assembler:
    """Uploads in Block1 blocks being assembled (asyncio thread only)."""

    def __init__(self, max_entries: int = UPLOADS_MAX, lifetime: float = MAX_TRANSMIT_WAIT) -> None:
        self.max_entries = max_entries
        self.lifetime = lifetime
        self._uploads: OrderedDict[tuple[Any, ...], tuple[float, bytearray]] = OrderedDict()

    def __len__(self) -> int:
        self._expire(time.monotonic())
        return len(self._uploads)

    def clear(self) -> None:
        self._uploads.clear()

    def feed(self, key: tuple[Any, ...], request: aiocoap.Message) -> bytes | aiocoap.Message:
        """The whole payload once ``request`` (a request with Block1) was the last block, else the answer
        to send now (2.31 Continue, 4.08, 4.00)."""
        block1 = request.opt.block1
        payload = bytes(request.payload)
        now = time.monotonic()
        self._expire(now)
        uploads = self._uploads
        if block1.block_number == 0:
            uploads.pop(key, None)
            so_far = bytearray(payload)
        else:
            kept = uploads.pop(key, None)
            if kept is None:
                return _incomplete()
            so_far = kept[1]
            if block1.more and len(payload) != block1.size:
                return refusal_message(Code.BAD_REQUEST, "Payload size does not match Block1")
            if block1.start != len(so_far):
                return _incomplete()
            so_far += payload
        if not block1.more:
            return bytes(so_far)
        uploads[key] = (now, so_far)
        while len(uploads) > self.max_entries:
            uploads.popitem(last=False)
        go_on = aiocoap.Message(code=Code.CONTINUE)
        go_on.opt.block1 = block1
        return go_on

    def _expire(self, now: float) -> None:
        uploads = self._uploads
        while uploads and next(iter(uploads.values()))[0] <= now - self.lifetime:
            uploads.popitem(last=False)


def _incomplete() -> aiocoap.Message:
    return aiocoap.Message(code=Code.REQUEST_ENTITY_INCOMPLETE)


@dataclass(slots=True)
class _Kept:
    used: float
    code: int
    options: Options
    payload: bytes
    fast: bool  # started by the datagram transport


class Block2Store:
    """Asyncio thread only."""

    def __init__(self, max_entries: int = BLOCKS_MAX, lifetime: float = MAX_TRANSMIT_WAIT) -> None:
        self.max_entries = max_entries
        self.lifetime = lifetime
        self._kept: OrderedDict[tuple[Any, ...], _Kept] = OrderedDict()

    def sizes(self) -> dict[str, int]:
        fast = sum(1 for k in self._kept.values() if k.fast)
        return {"block2": len(self._kept) - fast, "fast_block2": fast}

    def clear(self) -> None:
        self._kept.clear()

    def keep(self, key: tuple[Any, ...], code: int, options: Options, payload: bytes, fast: bool) -> None:
        now = time.monotonic()
        kept = [o for o in options if o[0] not in RESPONSE_HOP]
        self._kept[key] = _Kept(now, int(code), kept, payload, fast)
        self._kept.move_to_end(key)
        self._expire(now)

    def has(self, key: tuple[Any, ...]) -> bool:
        self._expire(time.monotonic())
        return key in self._kept

    def block(self, key: tuple[Any, ...], number: int, szx: int) -> Block | None:
        """Block ``number`` of size ``2 ** (szx + 4)`` of the response kept under ``key``; None when none is
        kept; a 4.00 when the block is past its end (as aiocoap answers)."""
        now = time.monotonic()
        self._expire(now)
        kept = self._kept.get(key)
        if kept is None:
            return None
        size = 1 << (szx + 4)
        start = number * size
        if start >= len(kept.payload):
            bad = refusal_message(Code.BAD_REQUEST, "Block request out of bounds")
            return int(bad.code), [], bytes(bad.payload)
        end = min(start + size, len(kept.payload))
        more = end < len(kept.payload)
        if more:
            kept.used = now
            self._kept.move_to_end(key)
        else:
            del self._kept[key]  # served to the end
        block2 = (BLOCK2, uint(number << 4 | (8 if more else 0) | szx))
        options = sorted([*kept.options, block2], key=_number)
        return kept.code, options, kept.payload[start:end]

    def _expire(self, now: float) -> None:
        kept = self._kept
        while len(kept) > self.max_entries:
            kept.popitem(last=False)
        while kept and next(iter(kept.values())).used <= now - self.lifetime:
            kept.popitem(last=False)


def _number(option: tuple[int, bytes]) -> int:
    return option[0]


def outgoing(message: aiocoap.Message) -> aiocoap.Message:
    """``message`` made ready to go back to a client through aiocoap's server side (in place): message type,
    id, token and remote are left to its message layer (a piggybacked ACK when the answer is ready in
    time, else a separate response of the request's own type)."""
    message.mtype = None
    message.mid = None
    message.token = None
    message.remote = None
    message.direction = Direction.OUTGOING
    return message


def as_message(block: Block) -> aiocoap.Message:
    """A block (or a whole response) as an aiocoap message for the server side."""
    code, options, payload = block
    return outgoing(aiocoap.Message.decode(encode(ACK, code, 0, b"", options, payload)))
