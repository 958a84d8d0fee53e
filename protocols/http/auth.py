"""Credentials of an HTTP request and the per-connection cache of the handler chain's decisions.

Credentials come from ``Authorization: Basic`` (username and password), ``Authorization: Bearer`` (the token
is the Session's password, the username is None), or, when the request has no Authorization header, the
query parameter ``authorization`` holding the same forms (``Basic <b64>``, ``Bearer <token>``, or a bare
token, taken as Bearer). The parameter is removed from the query before a request is forwarded. On an mTLS
listener a request with neither is asked for with no username and no password: the Session's verified
certificate identity is the credential (the ``static`` handler's ``identity`` users).

A keep-alive connection asks the chain once per distinct credentials (``HandlerChain.connect`` is an actor
ask per handler, and a ``password_hash`` check costs milliseconds): the Session and the decision are kept
for the connection's life, replaced when a handler pushes a new grant and dropped when it revokes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from ferryman.actors.contracts import Grant, Refusal, RefusalCode, Session, next_session_id
from ferryman.actors.handler import HandlerChain
from ferryman.protocols.tls.server import PeerCertificate

__all__ = ["CERTIFICATE", "INVALID", "AuthCache", "Credentials", "HttpSessionControl", "credentials_from"]

#: Refusals that depend on the credentials alone: safe to remember for the connection.
_CACHEABLE = frozenset({RefusalCode.BAD_CREDENTIALS, RefusalCode.NOT_AUTHORIZED, RefusalCode.BANNED})
_MAX_ENTRIES = 8


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str | None
    password: bytes | None
    scheme: str  # basic | bearer


#: Credentials that could not be parsed (bad base64, an unknown scheme): answered 401.
INVALID = Credentials(None, None, "invalid")
#: No header, no parameter, but a verified client certificate (mTLS): its identity is the credential.
CERTIFICATE = Credentials(None, None, "certificate")


def _parse(value: str) -> Credentials:
    scheme, _, rest = value.strip().partition(" ")
    kind = scheme.lower()
    rest = rest.strip()
    if kind == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text (obs-text in the header)
            return INVALID
        username, sep, password = decoded.partition(":")
        return Credentials(username, password.encode(), "basic") if sep else INVALID
    if kind == "bearer" and rest:
        return Credentials(None, rest.encode(), "bearer")
    if not rest and scheme and kind not in ("basic", "bearer"):
        return Credentials(None, scheme.encode(), "bearer")  # a bare token (query parameter form)
    return INVALID


def credentials_from(header: str | None, query: str) -> tuple[Credentials | None, str]:
    """The request's credentials (None: none given) and its query string without ``authorization=``."""
    token: str | None = None
    kept = query
    if "authorization" in query.lower():
        parts = []
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if unquote_plus(key).lower() == "authorization":
                if token is None:
                    token = unquote_plus(value)
            else:
                parts.append(part)
        kept = "&".join(parts)
    if header:
        return _parse(header), kept
    if token:
        return _parse(token), kept
    return None, kept


class HttpSessionControl:
    """Live policy changes for one cached session (called from handler actors; never blocks)."""

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: CacheEntry | None = None

    def update_grant(self, grant: Grant) -> None:
        if self.entry is not None:
            self.entry.decision = grant

    def disconnect(self, refusal: Refusal) -> None:
        if self.entry is not None:
            self.entry.decision = refusal
            self.entry.revoked = True


@dataclass(eq=False)
class CacheEntry:
    session: Session
    decision: Grant | Refusal
    control: HttpSessionControl = field(repr=False)
    revoked: bool = False
    notified: bool = False  # on_connect was told (so on_disconnect will be)


class AuthCache:
    """The decisions one connection has had, by credentials. Not shared between connections."""

    __slots__ = ("_entries", "chain", "listener", "peer", "remote")

    def __init__(
        self, chain: HandlerChain, listener: str, remote: tuple[str, int], peer: PeerCertificate
    ) -> None:
        self.chain = chain
        self.listener = listener
        self.remote = remote
        self.peer = peer  # the connection's PeerCertificate (NO_PEER without mTLS)
        self._entries: dict[Credentials, CacheEntry] = {}

    def decide(self, creds: Credentials) -> tuple[Session, Grant | Refusal]:
        entry = self._entries.get(creds)
        if entry is not None:
            if not entry.revoked:
                return entry.session, entry.decision
            self._drop(creds, "revoked")  # a handler revoked it: ask the chain afresh
        peer = self.peer
        control = HttpSessionControl()
        session = Session(
            id=next_session_id(),
            listener=self.listener,
            protocol="http",
            remote_addr=self.remote,
            protocol_version=11,
            username=creds.username,
            password=creds.password,
            peer_cert=peer.der,
            identity=peer.identity,
            peer_sans=peer.sans,
            control=control,
        )
        decision = self.chain.connect(session)
        entry = CacheEntry(session, decision, control)
        control.entry = entry
        if isinstance(decision, Grant):
            self.chain.on_connect(session, decision)
            entry.notified = True
        cacheable = isinstance(decision, Grant) or decision.code in _CACHEABLE
        if cacheable:
            if len(self._entries) >= _MAX_ENTRIES:
                self._drop(next(iter(self._entries)), "evicted")
            self._entries[creds] = entry
        return session, decision

    def _drop(self, creds: Credentials, reason: str) -> None:
        entry = self._entries.pop(creds)
        if entry.notified:
            self.chain.on_disconnect(entry.session, reason)

    def close(self, reason: str) -> None:
        """The connection ended: every session that had on_connect gets on_disconnect, once."""
        for creds in list(self._entries):
            self._drop(creds, reason)
