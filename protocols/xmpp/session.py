"""The XMPP session actor: one slixmpp ``ClientXMPP`` or XEP-0114 ``ComponentXMPP`` living on the
``AsyncioHost`` loop, kept connected with exponential backoff until the actor stops.

Threads: the actor's methods run in its greenlet and never block on the network; everything slixmpp does
runs in the asyncio thread (``host.submit`` / ``host.call_soon``), and inbound messages go back to the hub
with ``host.to_hub`` as ``Router.route`` defers. State shared across the two (``_connected``, the send
queue) is written only in the asyncio thread; the actor only reads the flag.

Outbound chats sent while disconnected wait in a bounded queue (``QUEUE_LIMIT``; the oldest is dropped
with a warning when full) and are flushed in order once the next session has started."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
from typing import Any

import pykka
import slixmpp
from loguru import logger

from ferryman.actors.asyncio_host import AsyncioHost
from ferryman.actors.contracts import Message
from ferryman.config.schema import BridgeXmppSettings

__all__ = ["KIND_CHAT", "QUEUE_LIMIT", "XmppSession", "parse_server"]

KIND_CHAT = "xmpp.chat"
QUEUE_LIMIT = 1000
SESSION_TIMEOUT = 30.0  # TCP connected but no session (stream / auth / bind) within this: abort, retry
STOP_TIMEOUT = 5.0


def parse_server(server: str, default_port: int) -> tuple[str, int]:
    """``"host:port"``, ``"host"``, ``"[::1]:5222"`` -> ``(host, port)``."""
    server = server.strip()
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if server.count(":") == 1:
        host, _, port = server.partition(":")
        return host, int(port) if port else default_port
    return server, default_port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class XmppSession(pykka.ThreadingActor):
    """The gateway's XMPP presence. ``settings.mode`` is ``"component"`` (``jid`` is the component's
    domain, ``secret`` the XEP-0114 secret) or ``"client"`` (``jid`` an account, ``secret`` its
    password). ``server`` is ``host:port`` (component default 5347, client default 5222).

    Client mode on a loopback server speaks plain TCP (SCRAM over the unencrypted stream); anywhere else
    it requires STARTTLS, verified against ``ca_file`` when given (else the system CAs)."""

    def __init__(
        self,
        settings: BridgeXmppSettings,
        host: AsyncioHost,
        router: pykka.ActorRef[Any] | None,
        *,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        ca_file: str | None = None,
    ) -> None:
        super().__init__()
        if settings.mode not in ("component", "client"):
            raise ValueError(f"bridge.xmpp.mode must be 'component' or 'client', not {settings.mode!r}")
        self._settings = settings
        self._host = host
        self._router = router
        self._router_proxy: Any = None
        self._reconnect_min = max(0.01, reconnect_min)
        self._reconnect_max = max(self._reconnect_min, reconnect_max)
        self._ca_file = ca_file
        self._component = settings.mode == "component"
        self._address = parse_server(settings.server, 5347 if self._component else 5222)
        # asyncio-thread state
        self._xmpp: slixmpp.BaseXMPP | None = None
        self._connected = False
        self._stopping = False
        self._started = asyncio.Event()
        self._down = asyncio.Event()
        self._queue: collections.deque[tuple[str, str, str | None]] = collections.deque()
        self._supervisor: asyncio.Task[None] | None = None
        #: Connections established so far (one per session start); for tests and status.
        self.sessions = 0

    # -- actor (greenlet) side ---------------------------------------------------------------------------

    def on_start(self) -> None:
        if self._router is not None:
            self._router_proxy = self._router.proxy()
        self._host.start()  # a no-op when it runs already
        self._host.submit(self._begin(), on_error=self._supervisor_failed)

    def on_stop(self) -> None:
        if not self._host.running:
            return
        try:
            self._host.run(self._shutdown(), timeout=STOP_TIMEOUT)
        except Exception as exc:  # e.g. TimeoutError: the loop is stuck; nothing more to do here
            logger.warning("xmpp session {}: unclean stop: {!r}", self._settings.jid, exc)

    def send_chat(self, to: str, body: str, sender: str | None = None) -> None:
        """Sends a chat message, fire-and-forget. ``sender`` picks the from-JID in component mode (any
        JID of the component's domain; default the component JID); a client always sends as itself.
        Queued (bounded) while disconnected."""
        self._host.call_soon(self._send, to, body, sender)

    def is_connected(self) -> bool:
        return self._connected

    def health(self) -> dict[str, Any]:
        """For the gateway's /health: connected to the XMPP server, messages waiting to be sent."""
        return {
            "status": "ok" if self._connected else "disconnected",
            "connected": self._connected,
            "queued": len(self._queue),
        }

    def _supervisor_failed(self, exc: BaseException) -> None:  # hub
        logger.opt(exception=exc).error("xmpp session {}: supervisor failed", self._settings.jid)

    def _deliver(self, message: Message) -> None:  # hub, via to_hub
        if self._router_proxy is None:
            logger.debug("xmpp session: no router, dropped chat from {}", message.source)
            return
        try:
            self._router_proxy.route.defer(message)
        except pykka.ActorDeadError:
            logger.warning("xmpp session: router is gone, dropped chat from {}", message.source)

    # -- asyncio side ------------------------------------------------------------------------------------

    async def _begin(self) -> None:
        self._xmpp = self._build()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    def _build(self) -> slixmpp.BaseXMPP:
        s = self._settings
        host, port = self._address
        xmpp: slixmpp.BaseXMPP
        if self._component:
            xmpp = slixmpp.ComponentXMPP(s.jid, s.secret, host, port)  # type: ignore[no-untyped-call]
        else:
            plain = _is_loopback(host)
            client = slixmpp.ClientXMPP(
                s.jid, s.secret, plugin_config={"feature_mechanisms": {"unencrypted_scram": plain}}
            )
            client.enable_direct_tls = False
            client.enable_starttls = not plain
            client.enable_plaintext = plain
            if not plain and self._ca_file:
                client.ca_certs = self._ca_file  # type: ignore[assignment]
            xmpp = client
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("disconnected", self._on_disconnected)
        xmpp.add_event_handler("message", self._on_message)
        return xmpp

    async def _supervise(self) -> None:
        xmpp = self._xmpp
        assert xmpp is not None
        host, port = self._address
        delay = self._reconnect_min
        while not self._stopping:
            self._started.clear()
            self._down.clear()
            attempt = xmpp.connect(host, port)
            try:
                rescheduled = await attempt
            except asyncio.CancelledError:
                if self._stopping:
                    return
                rescheduled = True
            if rescheduled is not None:  # TCP failed: slixmpp scheduled its own retry; ours instead
                xmpp.cancel_connection_attempt()
                logger.info("xmpp session {}: cannot reach {}:{}", self._settings.jid, host, port)
            else:
                await _first(self._started, self._down, timeout=SESSION_TIMEOUT)
                if self._started.is_set():
                    delay = self._reconnect_min
                    await self._down.wait()
                elif not self._down.is_set():
                    logger.warning(
                        "xmpp session {}: no session within {} s", self._settings.jid, SESSION_TIMEOUT
                    )
                    xmpp.abort()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._down.wait(), STOP_TIMEOUT)
            if self._stopping:
                return
            logger.info("xmpp session {}: reconnecting in {:.2f} s", self._settings.jid, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max)

    async def _shutdown(self) -> None:
        self._stopping = True
        xmpp, task = self._xmpp, self._supervisor
        if xmpp is not None:
            xmpp.cancel_connection_attempt()
            if xmpp.transport is not None:
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(xmpp.disconnect(wait=1.0), STOP_TIMEOUT - 1)
                if xmpp.transport is not None:
                    xmpp.abort()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connected = False
        if self._queue:
            logger.warning(
                "xmpp session {}: {} unsent chats dropped at stop", self._settings.jid, len(self._queue)
            )
            self._queue.clear()

    def _on_session_start(self, _: Any) -> None:
        xmpp = self._xmpp
        assert xmpp is not None
        if not self._component:
            xmpp.send_presence()
        self._connected = True
        self.sessions += 1
        self._started.set()
        logger.info("xmpp session {}: online ({} queued)", self._settings.jid, len(self._queue))
        while self._queue and self._connected:
            self._send_now(*self._queue.popleft())

    def _on_disconnected(self, reason: Any) -> None:
        if self._connected:
            logger.info("xmpp session {}: disconnected ({})", self._settings.jid, reason)
        self._connected = False
        self._down.set()

    def _on_message(self, msg: slixmpp.Message) -> None:
        if msg["type"] not in ("chat", "normal"):
            return
        body = msg["body"]
        if not body:
            return
        message = Message(
            kind=KIND_CHAT,
            topic=msg["from"].bare,
            payload=body.encode(),
            source=msg["from"].full,
            headers={"to": msg["to"].bare},
        )
        self._host.to_hub(self._deliver, message)

    def _send(self, to: str, body: str, sender: str | None) -> None:
        if self._connected and self._xmpp is not None and self._xmpp.transport is not None:
            self._send_now(to, body, sender)
            return
        if self._stopping:
            logger.warning("xmpp session {}: stopping, chat to {} dropped", self._settings.jid, to)
            return
        if len(self._queue) >= QUEUE_LIMIT:
            dropped = self._queue.popleft()
            logger.warning(
                "xmpp session {}: queue full, oldest chat to {} dropped", self._settings.jid, dropped[0]
            )
        self._queue.append((to, body, sender))

    def _send_now(self, to: str, body: str, sender: str | None) -> None:
        xmpp = self._xmpp
        assert xmpp is not None
        mfrom = slixmpp.JID(sender) if sender and self._component else None
        xmpp.send_message(mto=slixmpp.JID(to), mbody=body, mtype="chat", mfrom=mfrom)


async def _first(*events: asyncio.Event, timeout: float) -> None:
    """Returns when any of ``events`` is set, or after ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
