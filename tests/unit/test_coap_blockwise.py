"""The coap listener's one owner of block-wise state (``protocols/coap/blockwise.py``) and the proxy's
forwarding rules (``protocols/coap/proxy_core.py``): pure functions and containers, no servers."""

from __future__ import annotations

import aiocoap
from aiocoap.numbers.codes import Code

from ferryman.protocols.coap.blockwise import Block1Assembler, Block2Store, as_message, cache_key, message_key
from ferryman.protocols.coap.codec import (
    BLOCK2,
    CONTENT_FORMAT,
    ETAG,
    OBSERVE,
    SIZE2,
    URI_HOST,
    URI_PATH,
    URI_QUERY,
    uint,
)
from ferryman.protocols.coap.proxy_core import forwarded_options, path_prefix

PEER = ("127.0.0.1", 5000)


def _upload(number: int, more: bool, payload: bytes, szx: int = 0) -> aiocoap.Message:
    return aiocoap.Message(
        code=Code.POST,
        payload=payload,
        block1=(number, more, szx),
        uri_path=("t", "x"),
        uri_query=("auth=u:p",),
    )


def test_block1_uploads_are_assembled_in_order() -> None:
    spool = Block1Assembler()
    first = _upload(0, True, b"a" * 16)
    key = message_key(PEER, first)
    go_on = spool.feed(key, first)
    assert isinstance(go_on, aiocoap.Message) and go_on.code == Code.CONTINUE
    assert go_on.opt.block1 == (0, True, 0)
    assert len(spool) == 1
    assert isinstance(spool.feed(key, _upload(1, True, b"b" * 16)), aiocoap.Message)
    assert spool.feed(key, _upload(2, False, b"c" * 5)) == b"a" * 16 + b"b" * 16 + b"c" * 5
    assert len(spool) == 0


def test_block1_out_of_sequence_resized_or_unbegun_is_4_08() -> None:
    spool = Block1Assembler()
    key = message_key(PEER, _upload(0, True, b""))
    unbegun = spool.feed(key, _upload(1, True, b"x" * 16))
    assert isinstance(unbegun, aiocoap.Message) and unbegun.code == Code.REQUEST_ENTITY_INCOMPLETE
    spool.feed(key, _upload(0, True, b"x" * 16))
    skipped = spool.feed(key, _upload(2, True, b"x" * 16))
    assert isinstance(skipped, aiocoap.Message) and skipped.code == Code.REQUEST_ENTITY_INCOMPLETE
    spool.feed(key, _upload(0, True, b"x" * 16))
    resized = spool.feed(key, _upload(1, True, b"x" * 32, szx=1))  # starts at 32, 16 bytes so far
    assert isinstance(resized, aiocoap.Message) and resized.code == Code.REQUEST_ENTITY_INCOMPLETE
    spool.feed(key, _upload(0, True, b"x" * 16))
    short = spool.feed(key, _upload(1, True, b"x" * 3))  # says more, but not a full block
    assert isinstance(short, aiocoap.Message) and short.code == Code.BAD_REQUEST


def test_block1_uploads_are_bounded() -> None:
    spool = Block1Assembler(max_entries=2)
    for port in range(5):
        spool.feed(message_key(("127.0.0.1", port), _upload(0, True, b"")), _upload(0, True, b"x" * 16))
    assert len(spool) == 2


def test_block2_store_serves_blocks_and_forgets_a_finished_transfer() -> None:
    store = Block2Store()
    key = cache_key(PEER, 1, [(URI_PATH, b"big"), (OBSERVE, b""), (BLOCK2, b"\x06"), (SIZE2, b"\x10")])
    # Observe, Block2 and NoCacheKey options (Size2) are not part of the key: every block request finds it
    assert key == cache_key(PEER, 1, [(URI_PATH, b"big"), (BLOCK2, uint(1 << 4 | 6))])
    assert key != cache_key(("127.0.0.1", 5001), 1, [(URI_PATH, b"big")])
    body = bytes(range(256)) * 10  # 2,560 bytes
    store.keep(key, 0x45, [(ETAG, b"e1"), (CONTENT_FORMAT, b""), (BLOCK2, b"\x0e")], body, fast=True)
    assert store.sizes() == {"block2": 0, "fast_block2": 1}
    code, options, payload = store.block(key, 0, 6) or (0, [], b"")
    assert (code, payload) == (0x45, body[:1024])
    assert options == [(ETAG, b"e1"), (CONTENT_FORMAT, b""), (BLOCK2, uint(0 << 4 | 8 | 6))]  # in order
    assert store.block(key, 1, 6) == (
        0x45,
        [(ETAG, b"e1"), (CONTENT_FORMAT, b""), (BLOCK2, uint(1 << 4 | 8 | 6))],
        body[1024:2048],
    )
    out_of_bounds = store.block(key, 9, 6)
    assert out_of_bounds is not None and out_of_bounds[0] == int(Code.BAD_REQUEST)
    last = store.block(key, 2, 6)
    assert last is not None and last[2] == body[2048:] and last[1][-1] == (BLOCK2, uint(2 << 4 | 6))
    assert store.block(key, 2, 6) is None  # served to its end: forgotten
    assert store.sizes() == {"block2": 0, "fast_block2": 0}


def test_block2_store_is_bounded() -> None:
    store = Block2Store(max_entries=3)
    for port in range(10):
        store.keep(cache_key(("h", port), 1, []), 0x45, [], b"x" * 2000, fast=False)
    assert store.sizes() == {"block2": 3, "fast_block2": 0}


def test_a_block_becomes_an_aiocoap_answer() -> None:
    message = as_message((0x45, [(CONTENT_FORMAT, b""), (BLOCK2, uint(8 | 6))], b"x" * 1024))
    assert (
        message.code == Code.CONTENT and message.opt.block2 == (0, True, 6) and message.payload == b"x" * 1024
    )
    assert message.mtype is None and message.mid is None and message.token is None


def test_forwarded_options_drop_the_hop_and_put_the_prefix_first() -> None:
    options = [
        (URI_HOST, b"gw"),
        (OBSERVE, b""),
        (URI_PATH, b"a"),
        (CONTENT_FORMAT, b"\x32"),
        (URI_QUERY, b"auth=u:p"),
        (URI_QUERY, b"x=1"),
        (BLOCK2, b"\x06"),
    ]
    assert forwarded_options(options, path_prefix("/base/v1")) == [
        (URI_PATH, b"base"),
        (URI_PATH, b"v1"),
        (URI_PATH, b"a"),
        (CONTENT_FORMAT, b"\x32"),
        (URI_QUERY, b"x=1"),
    ]
    assert forwarded_options([(CONTENT_FORMAT, b"")], path_prefix("p")) == [
        (URI_PATH, b"p"),
        (CONTENT_FORMAT, b""),
    ]
