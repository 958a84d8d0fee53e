"""Credentials of an HTTP request and the per-connection cache of the handler chain's decisions.

Credentials come from ``Authorization: Basic`` (username and password), ``Authorization: Bearer`` (the token
is the Session's password, the username is None), or, when the request has no Authorization header, the
query parameter ``authorization`` holding the same forms (``Basic <b64>``, ``Bearer <token>``, or a bare
token, taken as Bearer). The parameter is removed from the query before a request is forwarded. On an mTLS
listener a request with neither is asked for with no username and no password: the Session's verified
certificate identity is the credential (the ``static`` handler's ``identity`` users).

A keep-alive connection asks the chain once per distinct credentials (``HandlerChain.connect`` is an actor
ask per handler, and a ``password_hash`` check costs milliseconds): the Session and the decision are kept
for the connection's life (at most ``_MAX_ENTRIES`` credentials, least recently used first out), replaced
when a handler pushes a new grant and dropped when it revokes. The cache and the credentials are the ones
CoAP uses too (``protocols/credentials.py``); what is HTTP's own is where credentials come from and the
Session a request is asked with.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote_plus

from ferryman.actors.contracts import Grant, Refusal, Session, next_session_id
from ferryman.actors.handler import HandlerChain
from ferryman.protocols.credentials import (
    INVALID,
    CachedDecision,
    CachedSessionControl,
    Credentials,
    DecisionCache,
)
from ferryman.protocols.tls.server import PeerCertificate

__all__ = [
    "CERTIFICATE",
    "INVALID",
    "AuthCache",
    "CacheEntry",
    "Credentials",
    "HttpSessionControl",
    "credentials_from",
]

_MAX_ENTRIES = 8

#: No header, no parameter, but a verified client certificate (mTLS): its identity is the credential.
CERTIFICATE = Credentials(None, None, scheme="certificate")
#: The cached decision of one set of credentials, and its SessionControl (``protocols/credentials.py``).
CacheEntry = CachedDecision[Credentials]
HttpSessionControl = CachedSessionControl


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
        return Credentials(username, password.encode(), scheme="basic") if sep else INVALID
    if kind == "bearer" and rest:
        return Credentials(None, rest.encode(), scheme="bearer")
    if not rest and scheme and kind not in ("basic", "bearer"):
        return Credentials(None, scheme.encode(), scheme="bearer")  # a bare token (query parameter form)
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


class AuthCache:
    """The decisions one connection has had, by credentials. Not shared between connections."""

    __slots__ = ("_cache", "chain", "listener", "peer", "remote")

    def __init__(
        self, chain: HandlerChain, listener: str, remote: tuple[str, int], peer: PeerCertificate
    ) -> None:
        self.chain = chain
        self.listener = listener
        self.remote = remote
        self.peer = peer  # the connection's PeerCertificate (NO_PEER without mTLS)
        self._cache: DecisionCache[Credentials] = DecisionCache(
            on_connect=chain.on_connect, on_disconnect=chain.on_disconnect, max_entries=_MAX_ENTRIES
        )

    def __len__(self) -> int:
        return len(self._cache)

    def decide(self, creds: Credentials) -> tuple[Session, Grant | Refusal]:
        entry = self._cache.lookup(creds)  # a revoked entry is forgotten here: the chain is asked afresh
        if entry is not None:
            return entry.session, entry.decision
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
        entry = self._cache.admit(creds, session, self.chain.connect(session), control)
        return session, entry.decision

    def close(self, reason: str) -> None:
        """The connection ended: every session that had on_connect gets on_disconnect, once."""
        self._cache.close(reason)
