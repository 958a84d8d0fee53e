"""Authentication and authorization of CoAP requests, for publish mode and proxy mode alike.

Every request is authenticated. Credentials come from the ``auth`` query option (``?auth=<token>``):
``<username>:<password>`` (split at the first ``:``; the ``static`` handler's users), or a token without
``:``, which is the Session's password with no username (for handlers that take API keys or bearer
tokens). Without ``auth`` on a DTLS listener the DTLS identity (the PSK identity, or a certificate's) is
the credential: the Session is asked with no username and no password and ``identity`` set. Anything
else is answered 4.01 Unauthorized.

CoAP has no connection, so the "session" handlers see is one (peer address, credentials) pair. The
handler chain is asked once per pair (``HandlerChain.connect`` is an actor ask per handler and a
``password_hash`` check costs milliseconds) and its decision is remembered for ``ttl`` seconds after the
last request (bounded, least recently used first out; a pair holding an observation stays). ``on_connect``
is told when a pair is first granted and ``on_disconnect`` exactly once when it is forgotten. A handler's
``update_grant`` replaces the decision at once; its ``disconnect`` revokes it (later requests ask afresh)
and ends the pair's observations. The credentials and the cache are the ones HTTP uses too
(``protocols/credentials.py``); what is CoAP's own is where credentials come from, asking the chain from
the asyncio thread (one ask per pair however many requests wait for it) and the answers (4.01, 4.03).

API for the resources (asyncio thread):

- ``await authenticate(ctx, request) -> Principal | aiocoap.Message``: the message is the refusal to
  return (4.01, 4.29 or 5.03);
- ``await authorize(ctx, principal, action, topic, payload) -> aiocoap.Message | None``: ``action`` is
  ``"publish"`` (POST / PUT / DELETE: ``auth_publish``) or ``"subscribe"`` (GET with Observe:
  ``auth_subscribe``); None when allowed (``on_publish`` / ``on_subscribe`` are told), else 4.03;
- ``topic_of(request)``, ``action_of(request)``, ``without_auth(request)`` (the request minus the
  ``auth`` option, for forwarding).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import aiocoap
from aiocoap.numbers.codes import Code

from ferryman.actors.asyncio_host import AsyncioHost
from ferryman.actors.contracts import Grant, Refusal, RefusalCode, Session, next_session_id
from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.protocols.addresses import plain_address
from ferryman.protocols.credentials import (
    INVALID,
    CachedDecision,
    CachedSessionControl,
    Credentials,
    DecisionCache,
)

from .codec import answer_room, fit

__all__ = [
    "INVALID",
    "AuthCache",
    "CoapListenerState",
    "Credentials",
    "Principal",
    "action_of",
    "authenticate",
    "authorize",
    "check",
    "credential_refusal",
    "credentials_of",
    "notify_unsubscribe",
    "queries_without_auth",
    "refusal_message",
    "remote_of",
    "topic_of",
    "without_auth",
]


class CoapListenerState(Protocol):
    """What authentication and the observer book use of a listener's ``context.CoapContext`` (which has
    this shape and builds both): a structural type, so this module need not import the context above it."""

    settings: Any
    chain: HandlerChain
    metrics: Metrics
    host: AsyncioHost
    auth: AuthCache
    stopping: bool

    @property
    def name(self) -> str: ...
    def log(self, level: str, message: str, *args: Any) -> None: ...
    def count_refusal(self, what: str) -> None: ...


AUTH_KEY = "auth"

_REFUSAL_CODE = {
    RefusalCode.SERVER_UNAVAILABLE: Code.SERVICE_UNAVAILABLE,
    RefusalCode.SERVER_BUSY: Code.SERVICE_UNAVAILABLE,
    RefusalCode.SERVER_SHUTTING_DOWN: Code.SERVICE_UNAVAILABLE,
    RefusalCode.QUOTA_EXCEEDED: Code.TOO_MANY_REQUESTS,
}


def credentials_from_queries(queries: Iterable[str], identity: str | None = None) -> Credentials | None:
    """The ``auth`` Uri-Query's credentials: ``user:password``, or a bare token (a password without a
    username); :data:`INVALID` for an empty one; None without one."""
    for query in queries:
        key, _, value = query.partition("=")
        if key != AUTH_KEY:
            continue
        if not value:
            return INVALID
        username, colon, password = value.partition(":")
        if colon:
            return Credentials(username, password.encode(), identity)
        return Credentials(None, value.encode(), identity)
    return None


def credentials_of(request: aiocoap.Message) -> Credentials | None:
    """The credentials of ``request`` (None: none given; :data:`INVALID`: an empty ``auth``)."""
    identity = _dtls_identity(request)
    creds = credentials_from_queries(request.opt.uri_query, identity)
    if creds is not None:
        return creds
    if identity is not None:
        return Credentials(None, None, identity)
    return None


def _dtls_identity(request: aiocoap.Message) -> str | None:
    """The identity a DTLS transport authenticated, or None (plain coap).

    aiocoap's tinydtls_server puts ``authenticated_claims = [<name>]`` on the request's remote: the name of
    the server-credentials entry whose pre-shared key the handshake used (None before the handshake). The
    listener names each entry after its PSK identity (dtls.py, ``psk_credentials``), so the claim is the
    identity. Claims of other layers (OSCORE) are not DTLS identities: only a ``coaps`` remote counts.

    With certificates (dtls_cert.py) the request comes from the listener's plain udp6 endpoint, fed by the
    DTLS terminator, which the listener puts on the endpoint as ``ferryman_dtls``: the identity is the one
    of the verified client certificate of the peer at the remote's address (None without one)."""
    remote = request.remote
    terminator = getattr(getattr(remote, "interface", None), "ferryman_dtls", None)
    if terminator is not None:
        identity: str | None = terminator.identity_of(getattr(remote, "sockaddr", ("?", 0)))
        return identity
    if getattr(remote, "scheme", None) != "coaps":
        return None
    claims = getattr(remote, "authenticated_claims", None) or ()
    for claim in claims:
        if claim is None:
            continue
        name = getattr(claim, "identity", None) or getattr(claim, "name", None) or claim
        if isinstance(name, bytes):
            return name.decode("utf-8", "replace")
        if isinstance(name, str):
            return name
    return None


def queries_without_auth(queries: Iterable[str]) -> tuple[str, ...]:
    """The Uri-Query values minus the ``auth`` one (what is forwarded)."""
    return tuple(q for q in queries if q.partition("=")[0] != AUTH_KEY)


def without_auth(request: aiocoap.Message) -> aiocoap.Message:
    """A copy of ``request`` whose Uri-Query has no ``auth`` option (what is forwarded)."""
    return request.copy(uri_query=queries_without_auth(request.opt.uri_query))


def topic_of(request: aiocoap.Message) -> str:
    """The Uri-Path segments joined by ``/`` (``coap://gw/sensors/k1/temp`` -> ``sensors/k1/temp``)."""
    return "/".join(request.opt.uri_path)


def action_of(request: aiocoap.Message) -> str | None:
    """``"publish"`` (POST, PUT, DELETE, PATCH, iPATCH), ``"subscribe"`` (GET / FETCH registering an
    observation), ``"unsubscribe"`` (deregistration: Observe = 1), None for a plain GET / FETCH."""
    code = request.code
    if code in (Code.POST, Code.PUT, Code.DELETE, Code.PATCH, Code.iPATCH):
        return "publish"
    observe = request.opt.observe
    if observe == 0:
        return "subscribe"
    if observe == 1:
        return "unsubscribe"
    return None


def remote_of(request: aiocoap.Message) -> tuple[str, int]:
    """The peer's (host, port); IPv4-mapped IPv6 addresses are given as IPv4."""
    remote = request.remote
    sockaddr = getattr(remote, "sockaddr", None)
    if sockaddr is None:
        sockaddr = getattr(getattr(remote, "_underlying_address", None), "sockaddr", None)
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return plain_address(sockaddr)
    return "?", 0


def refusal_message(code: Code, reason: str) -> aiocoap.Message:
    """A response with a diagnostic payload (RFC 7252 5.5.2: UTF-8 text, no Content-Format)."""
    return aiocoap.Message(code=code, payload=reason.encode("utf-8")[:128])


# -- the session cache ------------------------------------------------------------------------------


#: (peer address, credentials): what a decision is remembered for.
Key: TypeAlias = tuple[tuple[str, int], Credentials]
#: One remembered decision (``protocols/credentials.py``): ``session``, ``decision``, ``expires``,
#: ``revoked``, ``notified`` and the ``watchers`` (observations) that keep it.
Entry: TypeAlias = CachedDecision[Key]
#: The SessionControl of a remembered pair: ``disconnect`` revokes it and ends its observations.
CoapSessionControl = CachedSessionControl


@dataclass(eq=False)
class Principal:
    """An authenticated requester: its Session and the live decision of the handler chain."""

    entry: Entry

    @property
    def session(self) -> Session:
        return self.entry.session

    @property
    def grant(self) -> Grant | None:
        """The current grant; None once a handler revoked it."""
        return self.entry.grant

    def hold(self, watcher: Callable[[Refusal], None]) -> None:
        """Keeps the pair remembered while ``watcher`` (an observation) lives; it is called on revocation."""
        self.entry.watchers.append(watcher)

    def release(self, watcher: Callable[[Refusal], None]) -> None:
        if watcher in self.entry.watchers:
            self.entry.watchers.remove(watcher)
        self.entry.touch()


class AuthCache:
    """(peer, credentials) -> the chain's decision (a ``DecisionCache``). Used only from the asyncio
    thread; the chain is asked in the hub."""

    def __init__(self, ctx: CoapListenerState, ttl: float = 60.0, max_entries: int = 4096) -> None:
        self.ctx = ctx
        self._cache: DecisionCache[Key] = DecisionCache(
            on_connect=self._on_connect, on_disconnect=self._on_disconnect, ttl=ttl, max_entries=max_entries
        )
        self._pending: dict[Key, asyncio.Future[Entry]] = {}

    @property
    def ttl(self) -> float:
        return self._cache.ttl

    @property
    def max_entries(self) -> int:
        return self._cache.max_entries

    def __len__(self) -> int:
        return len(self._cache)

    def _on_connect(self, session: Session, grant: Grant) -> None:
        self.ctx.host.to_hub(self.ctx.chain.on_connect, session, grant)

    def _on_disconnect(self, session: Session, reason: str) -> None:
        self.ctx.host.to_hub(self.ctx.chain.on_disconnect, session, reason)

    def _revoked(self, entry: Entry, refusal: Refusal) -> None:
        """A handler revoked the pair (in the hub): its observations end, in the asyncio thread."""
        self.ctx.host.call_soon(self._end_watchers, entry, refusal)

    def _end_watchers(self, entry: Entry, refusal: Refusal) -> None:
        for watcher in list(entry.watchers):
            try:
                watcher(refusal)
            except Exception as exc:
                self.ctx.log("ERROR", "listener {!r}: ending an observation failed: {!r}", self.ctx.name, exc)

    def lookup(self, remote: tuple[str, int], creds: Credentials) -> Entry | None:
        """:meth:`decide` when the decision is remembered (a hit: the same bookkeeping, no coroutine), else
        None (an expired or revoked entry is forgotten): then ``await decide(...)`` asks the chain."""
        return self._cache.lookup((remote, creds))

    async def decide(self, remote: tuple[str, int], creds: Credentials) -> Entry:
        key = (remote, creds)
        entry = self._cache.lookup(key)
        if entry is not None:
            return entry
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            entry = await self._ask(key, creds)
            future.set_result(entry)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._pending[key]
        return entry

    async def _ask(self, key: Key, creds: Credentials) -> Entry:
        ctx = self.ctx
        control = CoapSessionControl(self._revoked)
        session = Session(
            id=next_session_id(),
            listener=ctx.name,
            protocol="coap",
            remote_addr=key[0],
            protocol_version=1,
            username=creds.username,
            password=creds.password,
            identity=creds.identity,
            control=control,
        )
        decision = await ctx.host.in_hub(ctx.chain.connect, session)
        return self._cache.admit(key, session, decision, control)

    def touch(self, entry: Entry) -> None:
        entry.touch()

    def sweep(self) -> int:
        """Forgets the pairs idle for ``ttl`` seconds (called periodically by the listener); how many."""
        return self._cache.sweep()

    def close(self, reason: str) -> None:
        """The listener stops: every remembered pair that had on_connect gets on_disconnect."""
        self._cache.close(reason)


# -- the API for resources -------------------------------------------------------------------------------


async def authenticate(ctx: CoapListenerState, request: aiocoap.Message) -> Principal | aiocoap.Message:
    """The requester, or the refusal to answer with (4.01 no / unusable / refused credentials, 4.29
    quota, 5.03 handler unavailable or the listener stopping)."""
    if ctx.stopping:
        return refusal_message(Code.SERVICE_UNAVAILABLE, "server shutting down")
    creds = credentials_of(request)
    if creds is None:
        ctx.count_refusal("connect")
        return refusal_message(Code.UNAUTHORIZED, "credentials required: ?auth=<username>:<password>")
    if creds is INVALID:
        ctx.count_refusal("connect")
        return refusal_message(Code.UNAUTHORIZED, "empty auth option")
    entry = await ctx.auth.decide(remote_of(request), creds)
    decision = entry.decision
    if isinstance(decision, Grant):
        mark_authenticated(request)
        return Principal(entry)
    ctx.count_refusal("connect")
    return credential_refusal(decision)


#: The one text of every refusal of the credentials themselves, whatever the handler said (unknown user,
#: wrong password, banned...): a different text would tell a stranger which usernames exist.
REFUSED_TEXT = "credentials refused"


def credential_refusal(decision: Refusal) -> aiocoap.Message:
    """The answer to credentials the chain refused: 4.01 with :data:`REFUSED_TEXT` for a refusal of the
    credentials (the handler's reason is not told); 4.29 / 5.03 with the handler's reason for a quota or
    an unavailable handler (which say nothing about the user)."""
    code = _REFUSAL_CODE.get(decision.code)
    if code is None:
        return refusal_message(Code.UNAUTHORIZED, REFUSED_TEXT)
    return refusal_message(code, decision.reason or REFUSED_TEXT)


_AUTHENTICATED = "ferryman_authenticated"


def mark_authenticated(request: Any) -> None:
    """Notes on ``request`` (an aiocoap Message) that its peer authenticated: its answers are not cut to
    the request's size (listener._cap_answers)."""
    setattr(request, _AUTHENTICATED, True)


def is_authenticated(request: Any) -> bool:
    return bool(getattr(request, _AUTHENTICATED, False))


def request_size(request: aiocoap.Message) -> int:
    """The encoded size of a received request (aiocoap encodes only outgoing messages)."""
    payload = len(request.payload)
    try:
        options = len(request.opt.encode())
    except Exception:  # aiocoap decodes options it cannot encode again (deltas past 65804): count none
        options = 0
    return 4 + len(request.token) + options + (payload + 1 if payload else 0)


def shrink(message: aiocoap.Message, request: aiocoap.Message) -> None:
    """Cuts the answer ``message`` to ``request``'s size: its payload (a diagnostic) first, then its options.
    The header and token always fit (the token is the request's)."""
    limit = request_size(request)
    try:
        options = len(message.opt.encode())
    except Exception:
        options = limit
    if 4 + len(message.token) + options + (len(message.payload) + 1 if message.payload else 0) <= limit:
        return
    room = answer_room(limit, message.token, options)
    if room <= 0:
        message.opt = type(message.opt)()
        room = answer_room(limit, message.token)
    message.payload = fit(bytes(message.payload), room)


def check(
    ctx: CoapListenerState, principal: Principal, action: str, topic: str, payload: bytes = b""
) -> aiocoap.Message | None:
    """:func:`authorize` without the coroutine (the checks are inline grant methods, free of I/O)."""
    grant = principal.grant
    if grant is None:
        ctx.count_refusal("connect")
        return refusal_message(Code.UNAUTHORIZED, "revoked")
    chain = ctx.chain
    if action == "publish":
        if not grant.auth_publish(topic, payload):
            ctx.count_refusal("publish")
            return refusal_message(Code.FORBIDDEN, f"not allowed: {topic}")
        if chain.wants_publish:
            ctx.host.to_hub(chain.on_publish, principal.session, topic, payload)
        return None
    if action == "subscribe":
        if not grant.auth_subscribe(topic):
            ctx.count_refusal("subscribe")
            return refusal_message(Code.FORBIDDEN, f"not allowed: {topic}")
        if chain.wants_subscribe:
            ctx.host.to_hub(chain.on_subscribe, principal.session, [topic])
        return None
    if action == "unsubscribe":
        if not grant.auth_unsubscribe(topic):
            return refusal_message(Code.FORBIDDEN, f"not allowed: {topic}")
        return None
    raise ValueError(f"unknown action {action!r}")


async def authorize(
    ctx: CoapListenerState, principal: Principal, action: str, topic: str, payload: bytes = b""
) -> aiocoap.Message | None:
    """None when ``principal`` may do ``action`` on ``topic`` (``on_publish`` / ``on_subscribe`` are
    told), else the 4.03 (4.01 once revoked) to answer with."""
    return check(ctx, principal, action, topic, payload)


def notify_unsubscribe(ctx: CoapListenerState, principal: Principal, topic_filter: str) -> None:
    """An observation ended (deregistered, no longer acknowledged, or the listener stopped)."""
    if ctx.chain.wants_unsubscribe:
        ctx.host.to_hub(ctx.chain.on_unsubscribe, principal.session, [topic_filter])
