"""The bridge lease, the Redis subscription store and the active/standby actor against a real redis-server
(tests/redis_server.py), in this (gevent-patched) process: what ``[cluster] redis`` is built on
(bridge/lease.py, bridge/redis_store.py). The whole bridge failing over between two ``ferryman run``
replicas is test_bridge_failover.py.

Every wait is bounded; nothing asserts a duration."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from ferryman.bridge.lease import ACTIVE, STANDBY, ActiveStandbyBridge, Add, RedisLease
from ferryman.bridge.redis_store import SCHEMA_VERSION, LeaseLost, RedisStore
from ferryman.bridge.store import Store, StoreError, SubscriptionStore
from ferryman.bridge_wiring import redis_client
from ferryman.config import ClusterSettings
from tests.redis_server import RedisServer

A = "alice@localhost"
B = "bob@localhost"
LIMIT = 15.0  # safety limit of every wait


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Any]:
    redis_server.resume()
    c = redis_client(ClusterSettings(redis=redis_server.url, renew_interval=0.5))
    yield c
    c.close()


def key() -> str:
    return f"test:{uuid.uuid4().hex[:8]}"


def wait_for(check: Callable[[], bool], what: str, timeout: float = LIMIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the lease ---------------------------------------------------------------------------------------------
def test_lease_is_held_by_one_token_at_a_time(client: Any) -> None:
    k = key()
    one = RedisLease(client, k, 30.0, owner="one")
    two = RedisLease(client, k, 30.0, owner="two")
    assert one.acquire() and one.held and one.token is not None and one.token.startswith("one/")
    assert not two.acquire() and two.token is None
    assert two.holder() == "one"
    assert one.renew() and 0 < client.pttl(k) <= 30_000
    assert not two.renew() and not two.release()  # a non-holder neither extends nor frees it
    assert one.release() and one.token is None and client.get(k) is None
    assert two.acquire() and two.holder() == "two"
    assert not one.renew()  # a released lease is not renewed: its token is gone
    assert client.get(k).decode().startswith("two/")


def test_renewal_that_finds_another_token_loses_the_lease(client: Any) -> None:
    k = key()
    lease = RedisLease(client, k, 30.0)
    assert lease.acquire()
    client.set(k, "intruder/x", px=30_000)  # e.g. taken by another replica after an expiry
    assert not lease.renew()
    assert lease.token is None and not lease.held
    assert not lease.release()
    assert client.get(k) == b"intruder/x"  # release never deletes another holder's lease


def test_lease_expires_without_renewal(client: Any) -> None:
    k = key()
    one = RedisLease(client, k, 0.5)
    two = RedisLease(client, k, 0.5)
    assert one.acquire()
    wait_for(lambda: two.acquire(), "the unrenewed lease to expire and be taken")
    assert not one.renew() and one.token is None


# -- the Redis store: the SQLite store's contract, and fencing ---------------------------------------------
@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, client: Any) -> Iterator[SubscriptionStore]:
    s: SubscriptionStore = Store(":memory:") if request.param == "sqlite" else RedisStore(client, key())
    yield s
    s.close()


def test_store_contract(store: SubscriptionStore) -> None:
    """One interface, two implementations: the same answers."""
    assert store.load() == {}
    assert store.add(A, "a/#") is True
    assert store.add(A, "a/#") is False
    assert store.add(A, "ünï/+/c")
    assert store.add(B, "a/#")
    assert store.load() == {A: {"a/#", "ünï/+/c"}, B: {"a/#"}}
    assert store.remove(A, "ünï/+/c") is True
    assert store.remove(A, "ünï/+/c") is False
    assert store.add(A, "b")
    assert store.remove_jid(A) == 2
    assert store.remove_jid(A) == 0
    assert store.load() == {B: {"a/#"}}


def test_redis_store_is_shared_and_versioned(client: Any) -> None:
    k = key()
    first = RedisStore(client, k)
    first.add(A, "x/#")
    assert RedisStore(client, k).load() == {A: {"x/#"}}  # what another replica reads
    assert first.schema_version() == SCHEMA_VERSION
    client.set(f"{k}:schema", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer"):
        RedisStore(client, k)


def test_redis_store_writes_are_fenced_by_the_lease(client: Any) -> None:
    k = key()
    lease = RedisLease(client, f"{k}:lease", 30.0)
    assert lease.acquire() and lease.token is not None
    fenced = RedisStore(client, f"{k}:subs", guard=(lease.key, lease.token))
    assert fenced.add(A, "a/#")
    client.set(lease.key, "other/y", px=30_000)  # the lease has gone to another replica
    for write in (lambda: fenced.add(A, "b"), lambda: fenced.remove(A, "a/#"), lambda: fenced.remove_jid(A)):
        with pytest.raises(LeaseLost):
            write()
    assert fenced.load() == {A: {"a/#"}}  # reads stay possible; nothing was changed


# -- the active/standby actor ------------------------------------------------------------------------------
class Part(pykka.ThreadingActor):
    """Stands for one active part of the bridge (an MQTT or XMPP session): records that it runs."""

    def __init__(self, running: set[str], name: str) -> None:
        super().__init__()
        self.running, self.name = running, name

    def on_start(self) -> None:
        self.running.add(self.name)

    def on_stop(self) -> None:
        self.running.discard(self.name)

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}


class Replica:
    def __init__(self, client: Any, lease_key: str, name: str, running: set[str]) -> None:
        self.name = name
        self.lease = RedisLease(client, lease_key, 2.0, owner=name)

        def activate(add: Add) -> None:
            add(Part.start(running, name))

        self.ref = ActiveStandbyBridge.start(self.lease, activate, renew_interval=0.5)

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.ref.proxy().health().get(timeout=5)
        return answer

    def role(self) -> str:
        return str(self.health()["role"])

    def stop(self) -> None:
        if self.ref.is_alive():
            self.ref.stop(timeout=10)


@pytest.fixture
def replicas(client: Any) -> Iterator[tuple[list[Replica], set[str]]]:
    running: set[str] = set()
    lease_key = key()
    pair = [Replica(client, lease_key, "r1", running), Replica(client, lease_key, "r2", running)]
    yield pair, running
    for replica in pair:
        replica.stop()


def active_one(pair: list[Replica]) -> Replica:
    roles = {r.name: r.role() for r in pair}
    active = [r for r in pair if roles[r.name] == ACTIVE]
    assert len(active) == 1, roles
    return active[0]


def test_one_replica_active_and_a_stopped_one_hands_over(replicas: tuple[list[Replica], set[str]]) -> None:
    pair, running = replicas
    wait_for(lambda: len(running) == 1, "one active replica")
    active = active_one(pair)
    standby = next(r for r in pair if r is not active)
    assert running == {active.name}
    health = standby.health()
    assert health["role"] == STANDBY and health["holder"] == active.name and "parts" not in health
    assert active.health()["parts"] == {"Part": {"status": "ok"}}
    active.stop()  # graceful: parts stopped, lease released
    assert active.name not in running
    wait_for(lambda: running == {standby.name}, "the standby to take over")
    assert standby.role() == ACTIVE and standby.health()["takeovers"] == 1


def test_active_replica_fences_when_redis_is_unreachable(
    replicas: tuple[list[Replica], set[str]], redis_server: RedisServer
) -> None:
    pair, running = replicas
    wait_for(lambda: len(running) == 1, "one active replica")
    active = active_one(pair)
    redis_server.pause()  # connections stay open, nothing answers: renewals time out
    try:
        wait_for(lambda: not running, "the active replica to stop its parts (fencing)")
        health = active.health()
        assert health["role"] == STANDBY and health["fenced"] == 1
        assert health["redis"] == "unreachable" and health["status"] == "redis-unreachable"
    finally:
        redis_server.resume()
    wait_for(lambda: len(running) == 1, "a replica to take the lease again once Redis answers")


def test_renewal_that_finds_another_token_fences_at_once(
    replicas: tuple[list[Replica], set[str]], client: Any
) -> None:
    pair, running = replicas
    wait_for(lambda: len(running) == 1, "one active replica")
    active = active_one(pair)
    lease_key = active.lease.key
    for replica in pair:  # the standby must not take it back meanwhile
        if replica is not active:
            replica.stop()
    client.set(lease_key, "intruder/z", px=60_000)
    wait_for(lambda: not running, "the replica to fence on its next renewal")
    health = active.health()
    assert health["role"] == STANDBY and health["fenced"] == 1 and "another token" in health["last_error"]
    assert client.get(lease_key) == b"intruder/z"


def test_failed_activation_stops_what_it_started_and_tries_again(client: Any) -> None:
    running: set[str] = set()
    attempts: list[int] = []
    lease = RedisLease(client, key(), 2.0, owner="r")

    def activate(add: Add) -> None:
        attempts.append(1)
        add(Part.start(running, f"part{len(attempts)}"))
        if len(attempts) == 1:
            raise RuntimeError("the first start breaks")

    ref = ActiveStandbyBridge.start(lease, activate, renew_interval=0.25)
    try:
        wait_for(lambda: running == {"part2"}, "the second activation, after a pause")
        health = ref.proxy().health().get(timeout=5)
        assert health["role"] == ACTIVE and "the first start breaks" in health["last_error"]
    finally:
        ref.stop(timeout=10)
    assert not running and client.get(lease.key) is None  # stopped: parts down, lease given back
