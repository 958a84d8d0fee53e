"""XMPP users as sessions of the authorization chain: one ``Session`` per bare JID, decided once by the
gateway's ``HandlerChain`` and cached, with live updates.

An XMPP user has no connection to the gateway (the gateway's XMPP session carries every user's chats), so
its session starts with its first command (or the first message due to it) and lasts until the bridge stops
or a handler ends it. The ``Session`` handlers see: ``protocol="xmpp"``, ``listener="xmpp"``, ``identity``,
``username`` and ``client_id`` the bare JID (the XMPP server authenticated it; no password, no certificate),
``remote_addr`` ``("", 0)`` (unknown), and a ``control`` (``XmppUserControl``) through which a handler
may replace the user's grant (``update_grant``) or end the session (``disconnect``), as it would for any
device: the change is told to the owner of the users (the bridge actor), which applies it.

A refusal is cached for ``refusal_ttl`` seconds (a bounded number of JIDs), so a JID that keeps writing
costs one chain decision every few seconds at most, and a JID allowed by a reload gets in soon after.

Owned by one actor (``XmppUsers`` is not thread-safe); ``decide`` asks the chain, so it blocks that actor
for one decision.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pykka
from loguru import logger

from ferryman.actors.contracts import Grant, Refusal, RefusalCode, Session, next_session_id
from ferryman.actors.handler import HandlerChain

__all__ = ["XMPP", "XmppUser", "XmppUserControl", "XmppUsers"]

XMPP = "xmpp"
#: ``tell(op, jid, session_id, arg)``: op is "update_grant" (arg a Grant) or "disconnect" (a Refusal).
Tell = Callable[[str, str, int, Any], None]


class XmppUserControl:
    """``SessionControl`` of one XMPP user: both calls are tells to the users' owner, never blocking."""

    __slots__ = ("_jid", "_sid", "_tell")

    def __init__(self, jid: str, session_id: int, tell: Tell) -> None:
        self._jid, self._sid, self._tell = jid, session_id, tell

    def update_grant(self, grant: Grant) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self._tell("update_grant", self._jid, self._sid, grant)

    def disconnect(self, refusal: Refusal) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self._tell("disconnect", self._jid, self._sid, refusal)


class XmppUser:
    """One bare JID's live session and its current grant."""

    __slots__ = ("grant", "jid", "session")

    def __init__(self, jid: str, session: Session, grant: Grant) -> None:
        self.jid, self.session, self.grant = jid, session, grant


class XmppUsers:
    """The decided XMPP users, by bare JID. ``tell`` carries handlers' controls to the owner (see
    ``XmppUserControl``), which calls ``apply`` with them."""

    def __init__(
        self,
        chain: HandlerChain,
        tell: Tell,
        *,
        refusal_ttl: float = 2.0,
        max_refused: int = 4096,
    ) -> None:
        self.chain = chain
        self._tell = tell
        self.refusal_ttl = refusal_ttl
        self.max_refused = max_refused
        self._users: dict[str, XmppUser] = {}
        self._refused: OrderedDict[str, tuple[float, Refusal]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._users)

    def known(self, jid: str) -> XmppUser | Refusal | None:
        """The cached decision for ``jid``, or None (not decided, or the refusal expired)."""
        user = self._users.get(jid)
        if user is not None:
            return user
        refused = self._refused.get(jid)
        if refused is None:
            return None
        if time.monotonic() - refused[0] > self.refusal_ttl:
            del self._refused[jid]
            return None
        return refused[1]

    def decide(self, jid: str) -> XmppUser | Refusal:
        """The user's session (deciding it through the chain the first time), or why it is refused."""
        known = self.known(jid)
        if known is not None:
            return known
        sid = next_session_id()
        session = Session(
            id=sid,
            listener=XMPP,
            protocol=XMPP,
            remote_addr=("", 0),
            client_id=jid,
            username=jid,
            identity=jid,
            control=XmppUserControl(jid, sid, self._tell),
        )
        decision = self.chain.connect(session)
        if isinstance(decision, Refusal):
            self._refused[jid] = (time.monotonic(), decision)
            self._refused.move_to_end(jid)
            while len(self._refused) > self.max_refused:
                self._refused.popitem(last=False)
            return decision
        self._refused.pop(jid, None)
        user = self._users[jid] = XmppUser(jid, session, decision)
        self.chain.on_connect(session, decision)
        return user

    def grant_of(self, jid: str) -> Grant | None:
        """The grant of ``jid`` (deciding it if needed), or None when it is refused."""
        user = self.decide(jid)
        return None if isinstance(user, Refusal) else user.grant

    def apply(self, op: str, jid: str, session_id: int, arg: Any) -> Refusal | None:
        """A control a handler sent (``XmppUserControl``); stale ones (an ended session's) are ignored.
        Returns the refusal when the session was ended (the owner tells the user)."""
        user = self._users.get(jid)
        if user is None or user.session.id != session_id:
            return None
        if op == "update_grant" and isinstance(arg, Grant):
            logger.info("xmpp user {}: new grant", jid)
            user.grant = arg
            return None
        if op == "disconnect":
            refusal = arg if isinstance(arg, Refusal) else Refusal(RefusalCode.NOT_AUTHORIZED, "disconnected")
            logger.info("xmpp user {}: session ended by a handler: {}", jid, refusal.reason)
            self.end(jid, refusal.reason or "disconnected")
            return refusal
        return None

    def end(self, jid: str, reason: str) -> None:
        """Ends ``jid``'s session (handlers get ``on_disconnect``); its next command decides anew."""
        user = self._users.pop(jid, None)
        if user is not None:
            self.chain.on_disconnect(user.session, reason)

    def end_all(self, reason: str) -> None:
        for jid in list(self._users):
            self.end(jid, reason)
