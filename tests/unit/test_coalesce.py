"""ReadCoalescer (protocols/mqtt/coalesce.py) on a real TCP connection: it waits for the low-water mark only
after a big read, and never leaves the mark set on the socket, so a lone message is read at once."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest

from ferryman.protocols.mqtt.coalesce import BATCH, ReadCoalescer

WAIT = 0.005


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    writer = socket.create_connection(server.getsockname())
    reader, _ = server.accept()
    server.close()
    reader.settimeout(5)
    yield writer, reader
    writer.close()
    reader.close()


def lowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def test_after_a_big_read_it_waits_then_puts_the_mark_back(pair: tuple[socket.socket, socket.socket]) -> None:
    writer, reader = pair
    coalescer = ReadCoalescer(reader, WAIT)
    writer.sendall(b"a" * (BATCH + 100))
    coalescer.wait()  # not flooding yet: returns at once
    got = 0
    while got < BATCH + 100:
        got += len(reader.recv(1 << 20))
    coalescer.seen(got)  # a big read: flooding
    coalescer.wait()  # nothing queued: gives up after WAIT
    assert lowat(reader) == 1
    writer.sendall(b"lone")
    coalescer.wait()
    assert lowat(reader) == 1
    assert reader.recv(100) == b"lone"  # would time out if the mark were still BATCH
    coalescer.seen(4)
    writer.sendall(b"b" * 10)
    coalescer.wait()
    assert reader.recv(100) == b"b" * 10


def test_a_small_read_never_enters_the_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    _writer, reader = pair
    coalescer = ReadCoalescer(reader, WAIT)
    coalescer.seen(BATCH - 1)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 7)  # a mark the coalescer must not touch
    coalescer.wait()
    assert lowat(reader) == 7


def test_tls_and_other_streams_are_left_alone() -> None:
    assert ReadCoalescer(object(), WAIT)._sock is None
    ctx = ssl.create_default_context()
    raw = socket.socket()
    tls = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
    try:
        coalescer = ReadCoalescer(tls, WAIT)
        coalescer.seen(BATCH * 2)
        coalescer.wait()  # no setsockopt on an unconnected TLS socket: returns at once
        assert coalescer._sock is None
    finally:
        tls.close()


def test_a_closed_socket_or_an_adapter_without_one_is_left_alone() -> None:
    closed = socket.socket()
    closed.close()
    assert ReadCoalescer(closed, WAIT)._sock is None  # fileno() of a closed gevent socket raises EBADF

    class Adapter:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

    raw = socket.socket()
    try:
        assert ReadCoalescer(Adapter(raw), WAIT)._sock is raw
    finally:
        raw.close()


def test_a_wait_of_zero_turns_it_off(pair: tuple[socket.socket, socket.socket]) -> None:
    _writer, reader = pair
    coalescer = ReadCoalescer(reader, 0.0)
    coalescer.seen(BATCH * 2)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 7)
    coalescer.wait()
    assert lowat(reader) == 7  # never set: flood_batch_wait = 0 leaves the socket as it is
