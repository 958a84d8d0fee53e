"""The XMPP <-> MQTT bridge across restarts and offline users, end to end (issue 4): a real mosquitto and a
real prosody of this module's own (so that they can be stopped and started again on the same ports),
``ferryman run`` with [bridge.*] as a child process, an XMPP user on slixmpp and ``mosquitto_pub``.

Every wait is bounded; nothing asserts a duration."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferryman.actors.asyncio_host import AsyncioHost
from tests.integration.test_bridge_e2e import CONFIG, login, mosquitto_pub, reply, say, until_answered
from tests.integration.test_prosody import USERS, Client
from tests.prosody import Prosody, prosody_with_users
from tests.servers import GatewayProcess, Mosquitto

DELIVERY_LIMIT = 30.0  # safety limit for a delivery to come back after a restart


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A mosquitto of this module only: the tests stop and start it again on the same port."""
    with Mosquitto(tmp_path_factory.mktemp("restart-mosquitto")) as m:
        yield m


@pytest.fixture(scope="module")
def own_xmpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prosody]:
    """A prosody of this module only (same ports across restarts; its data dir is fresh per start)."""
    with prosody_with_users(tmp_path_factory.mktemp("restart-prosody"), {"alice": USERS["alice"]}) as server:
        yield server


class Bridge:
    """One bridge configuration (fixed client_id and workdir, hence the same SQLite store and the same
    persistent MQTT session) that can be run as successive ``ferryman run`` processes."""

    def __init__(self, workdir: Path, broker: Mosquitto, xmpp: Prosody) -> None:
        self.workdir = workdir
        self.config = CONFIG.format(
            broker=broker.port,
            uid=uuid.uuid4().hex[:6],
            component=xmpp.component_jid,
            secret=xmpp.component_secret,
            component_port=xmpp.component_port,
        )
        self.current: GatewayProcess | None = None
        self.problems: list[str] = []
        self.stderr_log: list[str] = []  # stderr of every stopped process, in order

    def start(self) -> GatewayProcess:
        assert self.current is None, "stop() first"
        gw = GatewayProcess(self.workdir, self.config)  # same workdir: same bridge.sqlite3
        self.current = gw
        gw.start()
        return gw

    def stop(self) -> str:
        """SIGTERM; the process must exit 0 without a traceback (recorded, asserted at teardown)."""
        if self.current is None:
            return ""
        rc, err = self.current.stop()
        self.current = None
        self.stderr_log.append(err)
        if rc != 0 or "Traceback" in err:
            self.problems.append(f"gateway exited {rc}:\n{err[-3000:]}")
        return err

    def stderr(self) -> str:
        """Everything the bridge processes wrote so far (a new process truncates the file)."""
        now = self.current.stderr() if self.current is not None else ""
        return "\n".join([*self.stderr_log, now])


@pytest.fixture
def bridge(tmp_path: Path, own_broker: Mosquitto, own_xmpp: Prosody) -> Iterator[Bridge]:
    b = Bridge(tmp_path / "gw", own_broker, own_xmpp)
    b.start()
    yield b
    b.stop()
    assert not b.problems, "\n".join(b.problems)


def wait_for(check: Callable[[], bool], what: str, timeout: float = DELIVERY_LIMIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def logout(host: AsyncioHost, client: Client) -> None:
    async def bye() -> None:
        if client.xmpp.transport is not None:
            await client.disconnect()

    host.run(bye(), 15.0)


def subscribed(host: AsyncioHost, alice: Client, topic_filter: str) -> None:
    """Waits for the gateway's XMPP session, then subscribes ``topic_filter``."""
    until_answered(host, alice, "list", lambda b: b == "no subscriptions" or "/" in b)
    say(host, alice, f"subscribe {topic_filter}")
    assert reply(host, alice, lambda b: b.startswith(("subscribed", "error"))) == f"subscribed {topic_filter}"


def delivered(
    host: AsyncioHost,
    alice: Client,
    broker: Mosquitto,
    topic: str,
    payload: str,
    bridge: Bridge,
    timeout: float = DELIVERY_LIMIT,
) -> None:
    """Publishes (QoS 1) until alice gets ``topic: payload``: broker subscriptions are asynchronous."""
    want = f"{topic}: {payload}"
    deadline = time.monotonic() + timeout
    while True:
        mosquitto_pub(broker, topic, payload.encode())
        try:
            reply(host, alice, lambda b: b == want, timeout=1.0)
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                err = bridge.stderr()[-4000:]
                raise AssertionError(
                    f"{want!r} never reached alice within {timeout}s; gateway stderr:\n{err}"
                ) from None


def offline_store(xmpp: Prosody, user: str) -> Path:
    """Prosody's internal storage of ``user``'s offline messages (mod_offline, storage = "internal")."""
    assert xmpp.rundir is not None
    return xmpp.rundir / "data" / xmpp.domain / "offline" / f"{user}.list"


# -- 1. mosquitto restarts -------------------------------------------------------------------------------
def test_broker_restart_subscriptions_come_back(
    bridge: Bridge, own_broker: Mosquitto, own_xmpp: Prosody, host: AsyncioHost
) -> None:
    t = uuid.uuid4().hex[:6]
    alice = login(host, own_xmpp, "alice")
    try:
        subscribed(host, alice, f"mr{t}/#")
        delivered(host, alice, own_broker, f"mr{t}/a", "before", bridge)
        # persistence false: the restarted broker has forgotten every session and subscription; only the
        # bridge's re-subscription on reconnect can bring the delivery back
        own_broker.stop()
        own_broker.start()  # same port
        delivered(host, alice, own_broker, f"mr{t}/b", "after", bridge)
        say(host, alice, "list")
        assert reply(host, alice, lambda b: f"mr{t}" in b and ":" not in b) == f"mr{t}/#"
    finally:
        logout(host, alice)


# -- 2. prosody restarts ---------------------------------------------------------------------------------
def test_xmpp_server_restart_bridge_reconnects(
    bridge: Bridge, own_broker: Mosquitto, own_xmpp: Prosody, host: AsyncioHost
) -> None:
    t = uuid.uuid4().hex[:6]
    alice = login(host, own_xmpp, "alice")
    subscribed(host, alice, f"xr{t}/#")
    logout(host, alice)
    own_xmpp.stop()
    own_xmpp.start()  # same c2s and component ports, a fresh data dir
    own_xmpp.register("alice", USERS["alice"])
    alice = login(host, own_xmpp, "alice")
    try:
        # the component reconnects with backoff: say "list" until the bridge answers
        body = until_answered(host, alice, "list", lambda b: f"xr{t}" in b or b == "no subscriptions")
        assert body == f"xr{t}/#"
        delivered(host, alice, own_broker, f"xr{t}/a", "again", bridge)
        say(host, alice, f"unsubscribe xr{t}/#")
        assert (
            reply(host, alice, lambda b: b.startswith(("unsubscribed", "error"))) == f"unsubscribed xr{t}/#"
        )
    finally:
        logout(host, alice)


# -- 3. ferryman restarts --------------------------------------------------------------------------------
def test_gateway_restart_restores_subscriptions_and_gets_messages_published_while_down(
    bridge: Bridge, own_broker: Mosquitto, own_xmpp: Prosody, host: AsyncioHost
) -> None:
    t = uuid.uuid4().hex[:6]
    alice = login(host, own_xmpp, "alice")
    try:
        subscribed(host, alice, f"gr{t}/+/temp")
        delivered(host, alice, own_broker, f"gr{t}/k0/temp", "up", bridge)  # the broker subscription is live
        bridge.stop()  # SIGTERM: a normal DISCONNECT, the broker keeps the session (expiry 3600 s)
        for i in range(3):  # QoS 1 while the bridge is down: queued by the broker for its session
            mosquitto_pub(own_broker, f"gr{t}/k{i + 1}/temp", f"down{i}".encode())
        bridge.start()  # same config (client_id) and workdir (SQLite store)
        got: set[str] = set()
        wanted = {f"gr{t}/k{i + 1}/temp: down{i}" for i in range(3)}
        deadline = time.monotonic() + DELIVERY_LIMIT
        while not wanted <= got and time.monotonic() < deadline:
            try:
                got.add(reply(host, alice, lambda b: b.startswith(f"gr{t}/"), timeout=1.0))
            except AssertionError:
                continue
        assert wanted <= got, (
            f"queued QoS 1 messages lost across the restart: got {sorted(got)}, missing "
            f"{sorted(wanted - got)}; gateway stderr:\n{bridge.stderr()[-4000:]}"
        )
        say(host, alice, "list")
        assert reply(host, alice, lambda b: f"gr{t}" in b and ":" not in b) == f"gr{t}/+/temp"
        delivered(host, alice, own_broker, f"gr{t}/k9/temp", "live", bridge)  # and live delivery goes on
    finally:
        logout(host, alice)


# -- 4. offline user -------------------------------------------------------------------------------------
def test_message_for_offline_user_is_delivered_at_next_login(
    bridge: Bridge, own_broker: Mosquitto, own_xmpp: Prosody, host: AsyncioHost
) -> None:
    t = uuid.uuid4().hex[:6]
    alice = login(host, own_xmpp, "alice")
    subscribed(host, alice, f"off{t}/#")
    delivered(host, alice, own_broker, f"off{t}/a", "online", bridge)
    logout(host, alice)
    store = offline_store(own_xmpp, "alice")
    mosquitto_pub(own_broker, f"off{t}/b", b"while-away")
    wait_for(lambda: store.exists() and b"while-away" in store.read_bytes(), "prosody's offline store")
    alice = login(host, own_xmpp, "alice")  # with presence: prosody flushes the offline messages
    try:
        assert reply(host, alice, lambda b: "while-away" in b) == f"off{t}/b: while-away"
    finally:
        logout(host, alice)
