"""One asyncio event loop for every asyncio library (slixmpp now, aiocoap later), in a real OS thread.

The loop runs in a worker of the gevent hub's threadpool (a real thread even after ``monkey.patch_all()``),
so a coroutine that stalls its thread (CPU, TLS set-up, a blocking call) does not freeze the greenlets.
The two worlds cross over only with ``loop.call_soon_threadsafe`` (greenlet -> asyncio) and
``hub.loop.run_callback_threadsafe`` (asyncio -> hub); nothing here touches a gevent object of the hub
from the asyncio thread.

What the monkey-patching would otherwise break, and how the host avoids it (tests/unit/test_asyncio_host.py):

- ``selectors.DefaultSelector`` is gevent's ``GeventSelector`` and ``select.epoll`` is gone. The loop is
  built on the original ``selectors.EpollSelector`` (``monkey.get_original``), which wraps the original
  ``select.epoll``: the loop really sleeps in ``epoll_wait`` in its own thread.
- ``socket.socket`` is gevent's and asyncio creates its sockets through it. That works: asyncio puts every
  socket in non-blocking mode (timeout 0), and a gevent socket with timeout 0 calls straight through to the
  real socket and raises ``BlockingIOError`` instead of waiting on a hub. The sockets do create an idle
  gevent hub object in the loop's thread (never run, never waited on).
- ``threading`` is gevent's, so the loop's stock default executor would start "threads" that are
  greenlets of the loop thread's hub, which never runs: ``loop.getaddrinfo("localhost", ...)`` and every
  ``run_in_executor(None, ...)`` hung. The loop's default executor runs work in the hub's threadpool
  instead, and name resolution uses the original ``socket.getaddrinfo`` / ``getnameinfo`` there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

import gevent
import gevent.event
import gevent.lock
from gevent import monkey
from loguru import logger

__all__ = ["AsyncioHost", "HostLease", "SharedHost"]

T = TypeVar("T")

_EpollSelector = cast(type[selectors.BaseSelector], monkey.get_original("selectors", "EpollSelector"))
_getaddrinfo = cast(Callable[..., Any], monkey.get_original("socket", "getaddrinfo"))
_getnameinfo = cast(Callable[..., Any], monkey.get_original("socket", "getnameinfo"))


class _HubThreadPoolExecutor(concurrent.futures.ThreadPoolExecutor):
    """The hosted loop's default executor: runs each call in a real thread of the hub's threadpool.

    A ``ThreadPoolExecutor`` only because ``loop.set_default_executor`` demands one; it never starts a
    thread of its own."""

    def __init__(self, host: AsyncioHost) -> None:
        super().__init__(max_workers=1)
        self._host = host

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def task() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        # ThreadPool.spawn may wait for a free worker, which the hub greenlet itself must never do.
        self._host.to_hub(gevent.spawn, self._host.threadpool_spawn, task)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # nothing of its own to stop; the hub's threadpool belongs to the hub


class _HostLoop(asyncio.SelectorEventLoop):
    """A selector loop whose name resolution calls the unpatched resolver in a hub threadpool thread."""

    async def getaddrinfo(
        self,
        host: bytes | str | None,
        port: bytes | str | int | None,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:  # typeshed's element type is narrower; the values are socket.getaddrinfo's own
        result: list[Any] = await self.run_in_executor(
            None, _getaddrinfo, host, port, family, type, proto, flags
        )
        return result

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int = 0
    ) -> tuple[str, str]:
        return cast(tuple[str, str], await self.run_in_executor(None, _getnameinfo, sockaddr, flags))


class AsyncioHost:
    """Hosts one asyncio loop in a real thread of the gevent hub's threadpool.

    Use it from greenlets: ``start()``, ``run(coro)`` (blocks the calling greenlet only), ``submit(coro,
    on_done, on_error)`` (callbacks run in the hub, e.g. ``actor_ref.tell``), ``call_soon(fn)`` and
    ``stop()``. From the asyncio thread, ``to_hub(fn, *args)`` delivers events back to the greenlets and
    ``await in_hub(fn, *args)`` runs a call among them (a Pykka ask, the chain) and returns its result.
    Callbacks run in the hub by ``to_hub`` and ``submit`` must not block (``tell`` does not; anything that
    waits should ``gevent.spawn``); their exceptions are logged.
    """

    def __init__(self) -> None:
        self._hub: gevent.hub.Hub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: gevent.event.AsyncResult | None = None  # what threadpool.spawn returned
        self._stop_timeout = 5.0
        self._lock = gevent.lock.Semaphore()
        #: Native thread id of the loop's thread while it runs.
        self.native_id: int | None = None

    # -- lifecycle (greenlets) ---------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the asyncio host is not running: call start() first")
        return self._loop

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        """Starts the loop's thread and returns once the loop runs; a no-op while it runs."""
        with self._lock:
            if self._loop is not None:
                return
            hub = gevent.get_hub()
            self._hub = hub
            ready: gevent.event.AsyncResult = gevent.event.AsyncResult()
            self._thread = hub.threadpool.spawn(self._serve, ready)
            self._loop = ready.get()  # re-raises if the loop could not be built

    def stop(self, timeout: float = 5) -> None:
        """Cancels the loop's tasks, stops and closes the loop and waits for its thread, for up to
        ``timeout`` seconds (then ``TimeoutError``: something keeps the thread busy). A no-op when stopped;
        ``start()`` may follow."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            self._stop_timeout = timeout
            loop.call_soon_threadsafe(loop.stop)
            try:
                thread.get(timeout=timeout)
            except gevent.Timeout:
                raise TimeoutError(f"the asyncio loop's thread did not end within {timeout} s") from None
            self._loop = self._thread = None
            self.native_id = None

    # -- greenlet -> asyncio -----------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs ``coro`` on the loop and returns its result or raises its exception, blocking only the
        calling greenlet. After ``timeout`` seconds the task is cancelled and ``TimeoutError`` raised; the
        task is cancelled too if the waiting greenlet is killed."""
        loop = self.loop
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()
        tasks: list[asyncio.Task[T]] = []

        def deliver(task: asyncio.Task[T]) -> None:  # asyncio thread
            if task.cancelled():
                self.to_hub(result.set_exception, asyncio.CancelledError())
            elif (exc := task.exception()) is not None:
                self.to_hub(result.set_exception, exc)
            else:
                self.to_hub(result.set, task.result())

        def begin() -> None:  # asyncio thread
            task = loop.create_task(coro)
            tasks.append(task)
            task.add_done_callback(deliver)

        loop.call_soon_threadsafe(begin)
        try:
            return cast(T, result.get(timeout=timeout))
        except gevent.Timeout:
            loop.call_soon_threadsafe(self._cancel, tasks)
            raise TimeoutError(f"coroutine did not finish within {timeout} s") from None
        except BaseException:
            if not result.ready():  # e.g. GreenletExit: the waiter is gone, so is the work
                loop.call_soon_threadsafe(self._cancel, tasks)
            raise

    def submit(
        self,
        coro: Coroutine[Any, Any, T],
        on_done: Callable[[T], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> concurrent.futures.Future[T]:
        """Schedules ``coro`` and returns at once. ``on_done(result)`` or ``on_error(exception)`` (a
        cancellation included) runs in the hub when it ends; an error without ``on_error`` is logged."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def deliver(f: concurrent.futures.Future[T]) -> None:  # asyncio thread (or here, if already done)
            if f.cancelled():
                exc: BaseException | None = concurrent.futures.CancelledError()
            else:
                exc = f.exception()
            if exc is not None:
                if on_error is not None:
                    self.to_hub(on_error, exc)
                elif not isinstance(exc, concurrent.futures.CancelledError):
                    self.to_hub(_log_error, exc)
            elif on_done is not None:
                self.to_hub(on_done, f.result())

        future.add_done_callback(deliver)
        return future

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs ``fn(*args)`` in the asyncio thread (from any thread)."""
        self.loop.call_soon_threadsafe(fn, *args)

    # -- asyncio -> hub ----------------------------------------------------------------------------------

    def to_hub(self, fn: Callable[..., Any], *args: Any) -> None:
        """Runs ``fn(*args)`` in the gevent hub, in call order (from any thread; e.g. ``ref.tell, msg``)."""
        hub = self._hub
        if hub is None:
            raise RuntimeError("the asyncio host was never started")
        hub.loop.run_callback_threadsafe(_guarded, fn, args)

    async def in_hub(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs ``fn(*args)`` in a new greenlet of the hub and awaits its result (or exception) from the
        asyncio thread. For what must run among the greenlets: Pykka asks and tells, the handler chain,
        anything that waits on a gevent primitive. The asyncio thread never blocks on them; if the awaiting
        task is cancelled, the greenlet still runs to its end and its result is dropped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:  # asyncio thread
            if future.done():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        def run() -> None:  # a greenlet of the hub
            try:
                value = fn(*args)
            except Exception as exc:
                loop.call_soon_threadsafe(settle, False, exc)
            except BaseException as exc:  # GreenletExit: the hub is going away
                loop.call_soon_threadsafe(settle, False, RuntimeError(f"hub greenlet ended: {exc!r}"))
                raise
            else:
                loop.call_soon_threadsafe(settle, True, value)

        self.to_hub(gevent.spawn, run)
        return await future

    def threadpool_spawn(self, fn: Callable[[], None]) -> None:
        """Runs ``fn`` in a thread of the hub's threadpool; call it in a greenlet of the hub's thread."""
        assert self._hub is not None
        self._hub.threadpool.spawn(fn)

    # -- the loop's thread -------------------------------------------------------------------------------

    def _serve(self, ready: gevent.event.AsyncResult) -> None:
        try:
            loop = _HostLoop(_EpollSelector())
            loop.set_default_executor(_HubThreadPoolExecutor(self))
            asyncio.set_event_loop(loop)
            self.native_id = threading.get_native_id()
        except BaseException as exc:
            self.to_hub(ready.set_exception, exc)
            raise
        loop.call_soon(self.to_hub, ready.set, loop)  # the first thing the running loop does
        try:
            loop.run_forever()
        finally:
            try:
                self._wind_down(loop)
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _wind_down(self, loop: asyncio.AbstractEventLoop) -> None:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=self._stop_timeout))
        loop.run_until_complete(loop.shutdown_asyncgens())
        # No socket may outlive the loop: this thread's gevent hub goes with it, and a transport collected
        # later in another thread would close its socket on that gone hub (an unraisable ValueError). Close
        # what a library left open (the selector loop keeps its transports by fd), then run a few iterations:
        # a transport's close() closes its socket in a callback.
        for transport in list(getattr(loop, "_transports", {}).values()):
            if not transport.is_closing():
                transport.abort()
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))

    @staticmethod
    def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
        for task in tasks:
            task.cancel()


def _guarded(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        logger.exception("callback from the asyncio host failed: {!r}", fn)


def _log_error(exc: BaseException) -> None:
    logger.opt(exception=exc).error("asyncio host task failed")


class SharedHost:
    """The one :class:`AsyncioHost` of a Gateway, for every asyncio library it runs (slixmpp for the XMPP
    bridge, aiocoap for CoAP listeners: one loop). Built by the Gateway and handed to what needs it (the
    bridge component, listeners through ``ListenerServices.asyncio``); the host starts with the first
    :meth:`lease` and stops when the last lease is released, so a gateway with no asyncio user runs no
    loop thread."""

    def __init__(self) -> None:
        self._host: AsyncioHost | None = None
        self._holders = 0
        self._guard = gevent.lock.Semaphore()

    def lease(self) -> HostLease:
        """A hold on the running host; release it with ``stop()``."""
        with self._guard:
            if self._host is None:
                self._host = AsyncioHost()
            self._host.start()
            self._holders += 1
            return HostLease(self, self._host)

    def release(self, timeout: float) -> None:
        """One lease fewer (what ``HostLease.stop`` calls); the last one stops the host."""
        with self._guard:
            self._holders -= 1
            if self._holders == 0 and self._host is not None:
                self._host.stop(timeout)


class HostLease:
    """A hold on a :class:`SharedHost`'s running host (``host``); ``stop`` releases it, once (so a lease
    can sit among the Gateway's parts, which are stopped in reverse)."""

    def __init__(self, shared: SharedHost, host: AsyncioHost) -> None:
        self._shared = shared
        self.host = host
        self._held = True

    def stop(self, timeout: float = 5) -> None:
        if self._held:
            self._held = False
            self._shared.release(timeout)
