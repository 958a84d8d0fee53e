"""protocols/coap/codec.py against aiocoap's own codec, both ways, and on malformed input."""

from __future__ import annotations

import aiocoap
from aiocoap.numbers.optionnumbers import OptionNumber
from hypothesis import given
from hypothesis import strategies as st

from ferryman.protocols.coap import codec

# Options as aiocoap would carry them opaquely: a few well-known ones plus high unknown elective numbers.
option_numbers = st.sampled_from([1, 4, 8, 11, 11, 12, 15, 15, 17, 60, 258, 1000, 2048, 65000])
options = st.lists(st.tuples(option_numbers, st.binary(max_size=300)), max_size=6).map(
    lambda opts: sorted(opts, key=lambda o: o[0])
)
messages = st.tuples(
    st.integers(0, 3),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.binary(max_size=8),
    options,
    st.binary(max_size=200),
)


@given(messages)
def test_encode_then_parse_round_trips(
    m: tuple[int, int, int, bytes, list[tuple[int, bytes]], bytes],
) -> None:
    mtype, code, mid, token, opts, payload = m
    d = codec.parse(codec.encode(mtype, code, mid, token, opts, payload))
    assert d is not None
    assert (d.mtype, d.code, d.mid, d.token, d.options, d.payload) == (mtype, code, mid, token, opts, payload)


# What aiocoap keeps byte for byte: opaque options (ETag, If-Match, unknown numbers) and UTF-8 string options
# (uint options it would re-encode in their shortest form: 258 is No-Response, RFC 7967, a uint to aiocoap,
# so its b"\x00" comes back as b"", which hypothesis found).
_opaque = st.tuples(st.sampled_from([1, 4, 1000, 2048, 3000, 65000]), st.binary(max_size=300))
_text = st.tuples(st.sampled_from([8, 11, 15]), st.text(max_size=40).map(str.encode))
faithful = st.lists(st.one_of(_opaque, _text), max_size=6).map(lambda opts: sorted(opts, key=lambda o: o[0]))
faithful_messages = st.tuples(
    st.integers(0, 3),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.binary(max_size=8),
    faithful,
    st.binary(max_size=200),
)


@given(faithful_messages)
def test_aiocoap_reads_what_we_write(m: tuple[int, int, int, bytes, list[tuple[int, bytes]], bytes]) -> None:
    mtype, code, mid, token, opts, payload = m
    theirs = aiocoap.Message.decode(codec.encode(mtype, code, mid, token, opts, payload))
    assert (int(theirs.mtype), int(theirs.code), theirs.mid, theirs.token, theirs.payload) == (
        mtype,
        code,
        mid,
        token,
        payload,
    )
    assert [(int(o.number), o.encode()) for o in theirs.opt.option_list()] == opts


def test_we_read_what_aiocoap_writes() -> None:
    msg = aiocoap.Message(code=aiocoap.POST, payload=b"21.5", uri_path=("s", "k1"))
    msg.mtype, msg.mid, msg.token = aiocoap.CON, 0x1234, b"\x01\x02"
    msg.opt.uri_query = ("auth=dev1:pw1",)
    msg.opt.content_format = 0
    msg.opt.add_option(aiocoap.optiontypes.OpaqueOption(OptionNumber(2048), b"x" * 300))
    d = codec.parse(msg.encode())
    assert d is not None
    assert (d.mtype, d.code, d.mid, d.token, d.payload) == (
        codec.CON,
        codec.code(0, 2),
        0x1234,
        b"\x01\x02",
        b"21.5",
    )
    assert d.all(codec.URI_PATH) == [b"s", b"k1"]
    assert d.option(codec.URI_QUERY) == b"auth=dev1:pw1"
    assert d.option(codec.CONTENT_FORMAT) == b""
    assert d.option(2048) == b"x" * 300


def test_malformed_messages_are_none() -> None:
    for bad in (
        b"",
        b"\x40\x01\x00",  # too short
        b"\x80\x01\x00\x01",  # version 2
        b"\x49\x01\x00\x01" + b"t" * 9,  # token length 9
        b"\x42\x01\x00\x01t",  # token shorter than its length
        b"\x40\x01\x00\x01\xff",  # payload marker without payload
        b"\x40\x01\x00\x01\xf1x",  # option delta 15
        b"\x40\x01\x00\x01\x1f",  # option length 15
        b"\x40\x01\x00\x01\x13ab",  # option value past the end
        b"\x40\x01\x00\x01\xd1",  # extended delta missing
    ):
        assert codec.parse(bad) is None, bad


@given(st.binary(max_size=64))
def test_parse_never_raises(data: bytes) -> None:
    codec.parse(data)
