"""AsyncioHost: one asyncio loop in a real thread of the gevent hub's threadpool (the process is patched)."""

from __future__ import annotations

import asyncio
import selectors
import threading
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import pykka
import pytest
from gevent import monkey

from ferryman.actors.asyncio_host import AsyncioHost
from ferryman.actors.greenlet_actor import GreenletActor

LIMIT = 10.0  # a safety limit, never a measured duration
real_lock = monkey.get_original("_thread", "allocate_lock")
real_sleep = monkey.get_original("time", "sleep")


@pytest.fixture
def host() -> Iterator[AsyncioHost]:
    h = AsyncioHost()
    h.start()
    yield h
    h.stop()


class Ticker:
    """A greenlet counting hub turns: its count grows only while the hub is free to run greenlets."""

    def __init__(self) -> None:
        self.ticks = 0
        self._g = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self.ticks += 1
            gevent.sleep(0.001)

    def stop(self) -> None:
        self._g.kill()


def test_process_is_patched() -> None:
    assert monkey.is_module_patched("socket") and monkey.is_module_patched("threading")


def test_run_returns_result_and_raises(host: AsyncioHost) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def fail() -> None:
        raise ValueError("boom")

    assert host.run(add(2, 3), timeout=LIMIT) == 5
    with pytest.raises(ValueError, match="boom"):
        host.run(fail(), timeout=LIMIT)


def test_run_timeout_cancels_the_task(host: AsyncioHost) -> None:
    cancelled = gevent.event.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            host.to_hub(cancelled.set)
            raise

    with pytest.raises(TimeoutError):
        host.run(forever(), timeout=0.05)
    assert cancelled.wait(LIMIT)


def test_loop_runs_in_another_native_thread(host: AsyncioHost) -> None:
    get_ident = monkey.get_original("threading", "get_ident")

    async def where() -> tuple[int, int, bool, type[Any]]:
        loop = asyncio.get_running_loop()
        return threading.get_native_id(), get_ident(), loop is host.loop, type(loop._selector)  # type: ignore[attr-defined]

    native, ident, same_loop, selector = host.run(where(), timeout=LIMIT)
    assert native == host.native_id
    assert native != threading.get_native_id()
    assert ident != get_ident()
    assert same_loop
    # the original epoll selector, not gevent's GeventSelector (the patched selectors.DefaultSelector)
    assert selector is monkey.get_original("selectors", "EpollSelector")
    assert selector is not selectors.DefaultSelector


def test_greenlets_run_while_the_loop_thread_blocks(host: AsyncioHost) -> None:
    gate = real_lock()
    gate.acquire()
    started = gevent.event.Event()

    async def blocking() -> str:
        host.to_hub(started.set)
        assert gate.acquire(timeout=LIMIT)  # blocks the loop's whole thread, as CPU work or a sync call would
        real_sleep(0.05)
        return "done"

    ticker = Ticker()
    try:
        result = host.submit(blocking())
        assert started.wait(LIMIT)
        before = ticker.ticks
        while ticker.ticks < before + 20:  # greenlets advance while the loop's thread is stuck
            gevent.sleep(0.001)
        assert not result.done()
        gate.release()
        assert host.run(asyncio.sleep(0, "after"), timeout=LIMIT) == "after"
        assert result.result(timeout=LIMIT) == "done"
    finally:
        ticker.stop()


def test_greenlets_run_while_a_coroutine_awaits(host: AsyncioHost) -> None:
    ticker = Ticker()
    seen: list[int] = []

    async def waits() -> int:
        host.to_hub(lambda: seen.append(ticker.ticks))
        await asyncio.sleep(0.2)
        return 7

    try:
        assert host.run(waits(), timeout=LIMIT) == 7
        assert seen and ticker.ticks > seen[0]
    finally:
        ticker.stop()


def test_tcp_echo_inside_the_loop(host: AsyncioHost) -> None:
    async def echo_round_trip() -> tuple[bytes, str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping over a real socket\n")
        await writer.drain()
        line = await reader.readline()
        kind = type(writer.get_extra_info("socket")._sock).__module__
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return line, kind

    line, kind = host.run(echo_round_trip(), timeout=LIMIT)
    assert line == b"ping over a real socket\n"
    assert kind.startswith("gevent")  # asyncio got gevent's socket class; non-blocking, it passes through


def test_name_resolution_and_default_executor(host: AsyncioHost) -> None:
    async def resolve() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo("localhost", 80)
        native = await loop.run_in_executor(None, threading.get_native_id)
        return len(infos), native

    count, native = host.run(resolve(), timeout=LIMIT)
    assert count > 0
    assert native not in (threading.get_native_id(), host.native_id)


class Collector(GreenletActor):
    def __init__(self, got: gevent.event.AsyncResult) -> None:
        super().__init__()
        self.got = got

    def on_receive(self, message: Any) -> Any:
        self.got.set((message, threading.get_native_id()))


class ThreadCollector(pykka.ThreadingActor):
    def __init__(self, got: gevent.event.AsyncResult) -> None:
        super().__init__()
        self.got = got

    def on_receive(self, message: Any) -> Any:
        self.got.set(message)


def test_submit_delivers_to_an_actor(host: AsyncioHost) -> None:
    async def compute() -> dict[str, int]:
        await asyncio.sleep(0.01)
        return {"answer": 42}

    got: gevent.event.AsyncResult = gevent.event.AsyncResult()
    ref = Collector.start(got)
    try:
        host.submit(compute(), on_done=ref.tell)
        message, native = got.get(timeout=LIMIT)
        assert message == {"answer": 42}
        assert native == threading.get_native_id()  # handled in the hub's thread, not the loop's
    finally:
        ref.stop()

    got2: gevent.event.AsyncResult = gevent.event.AsyncResult()
    ref2 = ThreadCollector.start(got2)
    try:
        host.submit(compute(), on_done=ref2.tell)
        assert got2.get(timeout=LIMIT) == {"answer": 42}
    finally:
        ref2.stop()


def test_submit_on_error_and_events_from_the_loop(host: AsyncioHost) -> None:
    errors: gevent.event.AsyncResult = gevent.event.AsyncResult()
    events: list[int] = []
    finished = gevent.event.Event()

    async def fail() -> None:
        raise KeyError("nope")

    async def emit() -> None:
        for i in range(5):
            host.to_hub(events.append, i)
            await asyncio.sleep(0)
        host.to_hub(finished.set)

    host.submit(fail(), on_done=lambda _: None, on_error=errors.set)
    assert isinstance(errors.get(timeout=LIMIT), KeyError)
    host.call_soon(lambda: asyncio.ensure_future(emit()))
    assert finished.wait(LIMIT)
    assert events == [0, 1, 2, 3, 4]


def test_stop_cancels_pending_tasks_and_restarts() -> None:
    h = AsyncioHost()
    h.start()
    h.start()  # idempotent
    first_loop = h.loop
    errors: gevent.event.AsyncResult = gevent.event.AsyncResult()
    cleaned = gevent.event.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            h.to_hub(cleaned.set)

    future = h.submit(forever(), on_error=errors.set)
    h.run(asyncio.sleep(0.01), timeout=LIMIT)  # let it start
    waiter = gevent.spawn(h.run, asyncio.sleep(3600))
    gevent.sleep(0)
    h.stop(timeout=LIMIT)
    assert first_loop.is_closed()
    assert not h.running
    assert future.cancelled()
    assert cleaned.wait(LIMIT)
    assert isinstance(errors.get(timeout=LIMIT), BaseException)
    with pytest.raises(asyncio.CancelledError):
        waiter.get(timeout=LIMIT)
    with pytest.raises(RuntimeError):
        h.loop  # noqa: B018
    h.stop()  # stopping a stopped host is a no-op

    h.start()
    try:
        assert h.loop is not first_loop
        assert h.run(asyncio.sleep(0, "again"), timeout=LIMIT) == "again"
    finally:
        h.stop(timeout=LIMIT)


def test_stop_times_out_while_the_thread_is_busy() -> None:
    h = AsyncioHost()
    h.start()
    gate = real_lock()
    gate.acquire()
    started = gevent.event.Event()

    async def hog() -> None:
        h.to_hub(started.set)
        gate.acquire(timeout=LIMIT)

    h.submit(hog())
    assert started.wait(LIMIT)
    with pytest.raises(TimeoutError):
        h.stop(timeout=0.01)
    assert h.running
    gate.release()
    h.stop(timeout=LIMIT)  # the thread ends once the hog returns
    assert not h.running


def test_leases_share_one_host_until_the_last_is_released() -> None:
    from ferryman.actors.asyncio_host import SharedHost

    shared = SharedHost()
    first, second = shared.lease(), shared.lease()
    assert first.host is second.host and first.host.running
    first.stop()
    first.stop()  # a second release of the same lease changes nothing
    assert second.host.running
    assert second.host.run(asyncio.sleep(0, result="still here"), timeout=5) == "still here"
    second.stop()
    assert not second.host.running
    third = shared.lease()  # and it starts again for a new holder
    try:
        assert third.host.running
    finally:
        third.stop()


def test_stop_closes_transports_a_library_left_open() -> None:
    """A transport left open would be collected later in another thread and close its socket on the loop
    thread's destroyed gevent hub (an unraisable ValueError that failed an unrelated test)."""
    host = AsyncioHost()
    host.start()

    async def leak() -> asyncio.DatagramTransport:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        return transport

    transport = host.run(leak(), timeout=5)
    sock = transport.get_extra_info("socket")
    assert sock.fileno() >= 0
    host.stop()
    assert transport.is_closing()
    assert transport.get_extra_info("socket").fileno() == -1  # closed in the loop's own thread
