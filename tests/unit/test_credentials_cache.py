"""The one credentials / decision cache (protocols/credentials.py) and the HTTP and CoAP caches over it:
TTL, size bound (least recently used first out, watched entries kept), cacheable refusals, on_connect /
on_disconnect exactly once, live revocation through the Session's control, and each protocol's refusal
answers. No servers: a stand-in handler chain and asyncio host."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

from ferryman.actors.contracts import Grant, Refusal, RefusalCode, Session
from ferryman.protocols.coap import auth as coap_auth
from ferryman.protocols.credentials import (
    INVALID,
    CachedDecision,
    CachedSessionControl,
    Credentials,
    DecisionCache,
)
from ferryman.protocols.http import auth as http_auth
from ferryman.protocols.tls.server import NO_PEER

GRANT = Grant(["a/#"], ["a/#"])


class Chain:
    """A handler chain stand-in: grants ``good`` passwords, refuses ``bad`` ones (BAD_CREDENTIALS), says
    SERVER_UNAVAILABLE to ``busy``; records every call."""

    wants_publish = wants_subscribe = wants_unsubscribe = False

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def connect(self, session: Session) -> Grant | Refusal:
        self.events.append(("connect", session.password))
        if session.password == b"good":
            return GRANT
        if session.password == b"busy":
            return Refusal(RefusalCode.SERVER_UNAVAILABLE, "down")
        return Refusal(RefusalCode.BAD_CREDENTIALS, "wrong")

    def on_connect(self, session: Session, grant: Grant) -> None:
        self.events.append(("on_connect", session.password))

    def on_disconnect(self, session: Session, reason: str) -> None:
        self.events.append(("on_disconnect", reason))

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e[0] == kind)


def _session(password: bytes, control: Any) -> Session:
    return Session(id=1, listener="l", protocol="p", remote_addr=("h", 1), password=password, control=control)


def _admit(
    cache: DecisionCache[str], chain: Chain, key: str, password: bytes
) -> tuple[CachedDecision[str], CachedSessionControl]:
    control = CachedSessionControl()
    session = _session(password, control)
    return cache.admit(key, session, chain.connect(session), control), control


def test_grants_and_credential_refusals_are_remembered_others_are_not() -> None:
    chain = Chain()
    cache: DecisionCache[str] = DecisionCache(on_connect=chain.on_connect, on_disconnect=chain.on_disconnect)
    entry, _ = _admit(cache, chain, "g", b"good")
    assert entry.grant is GRANT and entry.notified and chain.count("on_connect") == 1
    assert cache.lookup("g") is entry
    _admit(cache, chain, "b", b"bad")
    assert cache.lookup("b") is not None  # BAD_CREDENTIALS depends on the credentials alone
    busy, _ = _admit(cache, chain, "x", b"busy")
    assert isinstance(busy.decision, Refusal) and cache.lookup("x") is None  # asked again next time
    assert len(cache) == 2
    cache.close("bye")
    assert chain.count("on_disconnect") == 1  # only the granted one was told on_connect
    assert len(cache) == 0


def test_ttl_expires_idle_entries_but_not_watched_ones() -> None:
    chain = Chain()
    cache: DecisionCache[str] = DecisionCache(
        on_connect=chain.on_connect, on_disconnect=chain.on_disconnect, ttl=60.0
    )
    idle, _ = _admit(cache, chain, "idle", b"good")
    held, _ = _admit(cache, chain, "held", b"good")
    held.watchers.append(lambda refusal: None)
    idle.expires = held.expires = 0.0  # as if 60 s went by
    assert cache.sweep() == 1
    assert ("on_disconnect", "expired") in chain.events
    assert cache.lookup("held") is held  # an observation keeps it
    assert held.expires > 0.0  # and a use extends it
    _admit(cache, chain, "again", b"good")
    cache.lookup("again").expires = 0.0  # type: ignore[union-attr]
    assert cache.lookup("again") is None and "again" not in cache  # expired on look-up: forgotten


def test_the_size_bound_evicts_the_least_recently_used_unwatched_entry() -> None:
    chain = Chain()
    cache: DecisionCache[str] = DecisionCache(
        on_connect=chain.on_connect, on_disconnect=chain.on_disconnect, max_entries=2
    )
    first, _ = _admit(cache, chain, "1", b"good")
    _admit(cache, chain, "2", b"good")
    assert cache.lookup("1") is first  # now "2" is the least recently used
    _admit(cache, chain, "3", b"good")
    assert "2" not in cache and "1" in cache and "3" in cache
    assert chain.events[-1] == ("on_disconnect", "evicted")
    cache.lookup("1").watchers.append(lambda r: None)  # type: ignore[union-attr]
    cache.lookup("3")
    _admit(cache, chain, "4", b"good")
    assert "1" in cache and "3" not in cache  # "1" was least recently used but is watched


def test_update_grant_and_revocation_through_the_control() -> None:
    chain = Chain()
    revoked: list[Any] = []
    cache: DecisionCache[str] = DecisionCache(on_connect=chain.on_connect, on_disconnect=chain.on_disconnect)
    control = CachedSessionControl(lambda entry, refusal: revoked.append((entry.key, refusal.reason)))
    session = _session(b"good", control)
    entry = cache.admit("k", session, chain.connect(session), control)
    other = Grant(["b/#"], [])
    session.control.update_grant(other)  # type: ignore[union-attr]
    assert cache.lookup("k") is entry and entry.grant is other
    session.control.disconnect(Refusal(RefusalCode.NOT_AUTHORIZED, "banned now"))  # type: ignore[union-attr]
    assert revoked == [("k", "banned now")] and entry.grant is None
    assert cache.lookup("k") is None  # revoked: forgotten, the chain is asked afresh
    assert chain.events[-1] == ("on_disconnect", "revoked")
    cache.close("bye")
    assert chain.count("on_disconnect") == 1  # exactly once


def test_a_replaced_entry_is_told_on_disconnect() -> None:
    chain = Chain()
    cache: DecisionCache[str] = DecisionCache(on_connect=chain.on_connect, on_disconnect=chain.on_disconnect)
    _admit(cache, chain, "k", b"good")
    _admit(cache, chain, "k", b"good")
    assert chain.events[-2:] == [("on_connect", b"good"), ("on_disconnect", "replaced")]
    assert math.isinf(cache.ttl)


# -- HTTP ------------------------------------------------------------------------------------------------


def test_http_credentials_are_the_shared_ones() -> None:
    creds, _ = http_auth.credentials_from("Basic ZGV2MTpwdzE=", "")
    assert creds == Credentials("dev1", b"pw1", scheme="basic")
    assert http_auth.credentials_from("Basic !!", "")[0] is INVALID is http_auth.INVALID
    assert http_auth.credentials_from("Bearer tok", "")[0] == Credentials(None, b"tok", scheme="bearer")


def test_http_cache_asks_once_per_credentials_and_forgets_on_close() -> None:
    chain = Chain()
    cache = http_auth.AuthCache(chain, "web", ("127.0.0.1", 5), NO_PEER)  # type: ignore[arg-type]
    good = Credentials("u", b"good", scheme="basic")
    s1, d1 = cache.decide(good)
    s2, d2 = cache.decide(good)
    assert s1 is s2 and d1 is d2 is GRANT and chain.count("connect") == 1
    assert (s1.protocol, s1.protocol_version, s1.remote_addr) == ("http", 11, ("127.0.0.1", 5))
    s1.control.disconnect(Refusal(RefusalCode.NOT_AUTHORIZED, "gone"))  # type: ignore[union-attr]
    s3, _ = cache.decide(good)
    assert s3 is not s1 and chain.count("connect") == 2  # revoked: asked afresh
    for i in range(9):  # at most 8 credentials per connection
        cache.decide(Credentials(f"u{i}", b"good", scheme="basic"))
    assert len(cache) == 8
    cache.close("connection closed")
    assert chain.count("on_connect") == chain.count("on_disconnect")


# -- CoAP ------------------------------------------------------------------------------------------------


class Host:
    """The asyncio host stand-in: everything runs at once, in the test's loop."""

    async def in_hub(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def to_hub(self, fn: Any, *args: Any) -> None:
        fn(*args)

    def call_soon(self, fn: Any, *args: Any) -> None:
        fn(*args)


class Ctx:
    def __init__(self) -> None:
        self.chain = Chain()
        self.host = Host()
        self.name = "coap"
        self.stopping = False
        self.refusals: list[str] = []
        self.auth = coap_auth.AuthCache(self, ttl=60.0, max_entries=10)  # type: ignore[arg-type]

    def log(self, level: str, message: str, *args: Any) -> None:
        pass

    def count_refusal(self, what: str) -> None:
        self.refusals.append(what)


def _request(*queries: str, code: Code = Code.POST) -> aiocoap.Message:
    return aiocoap.Message(code=code, uri_path=("a", "b"), uri_query=queries, payload=b"x")


def test_coap_authentication_answers_and_caches() -> None:
    ctx = Ctx()

    async def run() -> None:
        principal = await coap_auth.authenticate(ctx, _request("auth=u:good"))  # type: ignore[arg-type]
        assert isinstance(principal, coap_auth.Principal) and principal.grant is GRANT
        again = await coap_auth.authenticate(ctx, _request("auth=u:good"))  # type: ignore[arg-type]
        assert isinstance(again, coap_auth.Principal) and again.entry is principal.entry
        assert ctx.chain.count("connect") == 1 and len(ctx.auth) == 1
        assert principal.session.protocol == "coap" and principal.session.username == "u"
        refused = await coap_auth.authenticate(ctx, _request("auth=u:bad"))  # type: ignore[arg-type]
        assert isinstance(refused, aiocoap.Message) and refused.code == Code.UNAUTHORIZED
        none = await coap_auth.authenticate(ctx, _request())  # type: ignore[arg-type]
        assert isinstance(none, aiocoap.Message) and none.code == Code.UNAUTHORIZED
        busy = await coap_auth.authenticate(ctx, _request("auth=u:busy"))  # type: ignore[arg-type]
        assert isinstance(busy, aiocoap.Message) and busy.code == Code.SERVICE_UNAVAILABLE
        forbidden = coap_auth.check(ctx, principal, "publish", "b/x")  # type: ignore[arg-type]
        assert forbidden is not None and forbidden.code == Code.FORBIDDEN
        assert coap_auth.check(ctx, principal, "publish", "a/x") is None  # type: ignore[arg-type]
        # revocation: the observation ends, the next request asks the chain again
        ended: list[str] = []
        principal.hold(lambda refusal: ended.append(refusal.reason))
        principal.session.control.disconnect(Refusal(RefusalCode.NOT_AUTHORIZED, "revoked"))  # type: ignore[union-attr]
        assert ended == ["revoked"]
        gone = coap_auth.check(ctx, principal, "publish", "a/x")  # type: ignore[arg-type]
        assert gone is not None and gone.code == Code.UNAUTHORIZED
        fresh = await coap_auth.authenticate(ctx, _request("auth=u:good"))  # type: ignore[arg-type]
        assert isinstance(fresh, coap_auth.Principal) and fresh.entry is not principal.entry
        assert ctx.chain.count("connect") == 4

    asyncio.run(run())
    ctx.auth.close("listener stopped")
    assert ctx.chain.count("on_connect") == ctx.chain.count("on_disconnect") == 2
    assert coap_auth.credentials_from_queries(["auth="]) is coap_auth.INVALID is INVALID
