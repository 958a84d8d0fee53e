"""The ``static`` handler: users from the settings, each with publish and subscribe filters.

A user logs in with a password (or its hash), or, on an mTLS listener, with a verified client certificate
whose identity (subject CN, else the first SAN) is the user's ``identity``. ``%u`` in a filter stands for
the username and ``%c`` for the client id. A username or client id holding ``+``, ``#`` or ``/`` never
fills a pattern (the filter is left out), so no one widens their own grant by choosing a clever name. On
SIGHUP the new user list is applied to live sessions: a removed user or changed password disconnects
(MQTT 5: DISCONNECT 0x87), changed filters push a new grant.

XMPP users of the bridge (sessions of protocol ``"xmpp"``) are not its business: ``[[auth.users]]`` are
device accounts (a password or a certificate, which an XMPP user never presents to the gateway) and say
nothing about JIDs, so it abstains (None) for them rather than refusing; ``[bridge.xmpp]`` and plug-in
handlers decide them.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

import gevent
from loguru import logger

from ferryman.actors.contracts import Grant, Refusal, RefusalCode, Session
from ferryman.actors.handler import HandlerActor

from .passwords import VerifiedPasswords, hash_error, hash_password, verify_password

__all__ = ["StaticHandler", "expand_filters"]

_UNSAFE = ("+", "#", "/")


def expand_filters(filters: tuple[str, ...], username: str, client_id: str) -> list[str]:
    out: list[str] = []
    for f in filters:
        if "%u" in f:
            if not username or any(c in username for c in _UNSAFE):
                continue
            f = f.replace("%u", username)
        if "%c" in f:
            if not client_id or any(c in client_id for c in _UNSAFE):
                continue
            f = f.replace("%c", client_id)
        out.append(f)
    return out


def _verify_off_loop(password: bytes, encoded: str) -> bool:
    """``verify_password`` in the hub's thread pool: the event loop serves every other connection while
    PBKDF2 runs (it releases the GIL); only the connection being checked waits."""
    return bool(gevent.get_hub().threadpool.apply(verify_password, (password, encoded)))


class StaticHandler(HandlerActor):
    name = "static"
    # auth_connect reads users / by_identity / _decoy, which _load replaces whole, and waits for PBKDF2 in
    # the thread pool: the chain calls it in the session's greenlet.
    inline_connect = True
    # on_connect / on_disconnect only add to and remove from ``live`` (reload iterates over a copy).
    inline_notifications = frozenset({"on_connect", "on_disconnect"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verified = VerifiedPasswords(_verify_off_loop)
        self.users: dict[str, Any] = {}
        self.by_identity: dict[str, Any] = {}
        self._decoy = ""  # a hash as costly as the users' own: an unknown user takes as long as a known one
        self.live: dict[int, tuple[Session, Grant]] = {}
        self._load(self.settings)

    @classmethod
    def validate_options(cls, options: Mapping[str, Any], settings: Any) -> list[str]:
        # The settings layer has already checked the filters (with %u and %c); the hash scheme is this
        # handler's own business.
        problems: list[str] = []
        for i, user in enumerate(settings.auth.users):
            if user.password_hash:
                err = hash_error(user.password_hash)
                if err:
                    problems.append(f"auth.users[{i}].password_hash: {err}")
        return problems

    def on_start(self) -> None:
        if not self.users:
            logger.warning("auth handler 'static' has no users: every connection will be refused")

    def _load(self, settings: Any) -> None:
        users = settings.auth.users if settings is not None else ()
        self.users = {u.username: u for u in users}
        self.by_identity = {u.identity: u for u in users if u.identity}
        hashes = [u.password_hash for u in users if u.password_hash and not hash_error(u.password_hash)]
        iterations = [int(h.split("$")[1]) for h in hashes]
        self._decoy = hash_password(" decoy ", max(iterations)) if iterations else ""

    def _check(self, session: Session) -> Grant | Refusal:
        if session.password is None and session.identity is not None:
            # mTLS: the verified certificate's identity logs in; a username, if sent, must be that user's.
            user = self.by_identity.get(session.identity)
            if user is None:
                return Refusal(RefusalCode.NOT_AUTHORIZED, f"no user for certificate {session.identity!r}")
            if session.username not in (None, "", user.username):
                return Refusal(RefusalCode.NOT_AUTHORIZED, "username does not match the certificate's user")
            return self._grant(user.username, session.client_id, user)
        user = self.users.get(session.username or "")
        if user is None or session.password is None:
            if self._decoy and session.password is not None:
                # The same PBKDF2 work as a wrong password: response times do not tell who exists.
                _verify_off_loop(session.password, self._decoy)
            return Refusal(RefusalCode.NOT_AUTHORIZED, "unknown user or no password")
        if user.password_hash:
            ok = self.verified.verify(session.password, user.password_hash)
        elif user.password:
            ok = hmac.compare_digest(session.password, user.password.encode())
        else:
            ok = False  # a certificate-only user
        if not ok:
            return Refusal(RefusalCode.NOT_AUTHORIZED, "wrong password")
        return self._grant(session.username or "", session.client_id, user)

    @staticmethod
    def _grant(username: str, client_id: str, user: Any) -> Grant:
        return Grant(
            expand_filters(user.publish, username, client_id),
            expand_filters(user.subscribe, username, client_id),
        )

    def auth_connect(self, session: Session) -> Grant | Refusal | None:
        if session.protocol == "xmpp":
            return None
        return self._check(session)

    def on_connect(self, session: Session, grant: Grant) -> None:
        if session.protocol != "xmpp":
            self.live[session.id] = (session, grant)

    def on_disconnect(self, session: Session, reason: str) -> None:
        self.live.pop(session.id, None)

    def reload(self, settings: Any) -> None:
        super().reload(settings)
        self._load(settings)
        for sid, (session, old) in list(self.live.items()):
            decision = self._check(session)
            if session.control is None:
                continue
            if isinstance(decision, Refusal):
                logger.info("revoking {!r}: {}", session, decision.reason)
                session.control.disconnect(Refusal(RefusalCode.NOT_AUTHORIZED, f"revoked: {decision.reason}"))
                self.live.pop(sid, None)
            elif (decision.publish, decision.subscribe) != (old.publish, old.subscribe):
                session.control.update_grant(decision)
                self.live[sid] = (session, decision)
