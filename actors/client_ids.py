"""Client identifiers bound to the identity that first claimed them, gateway-wide.

A broker keeps one session per client id: whoever connects with an id takes the session over, the old
connection is dropped and the messages queued for it go to the newcomer. Without a binding, any device
with valid credentials of its own could take another device's session (and its queued messages, which its
grant then refuses and acknowledges: lost). The gateway therefore remembers which identity (user name,
else verified certificate identity) claimed each id and refuses the id to any other identity
(``client_id_binding = "identity"``, the default), unless the handler's grant says it may take ids
(``Grant.take_client_id``). ``client_id_binding = "none"`` turns the check off. The bridge's own client
id (``[bridge.mqtt] client_id``) is reserved either way: no device may use it.

One ``ClientIdBinding`` per Gateway, shared by every listener through the ``HandlerChain`` they are all
given. It lives in memory: a restart forgets the bindings of offline sessions (the next claim binds
again); the reserved ids come from the settings and are never forgotten.

It also knows which connection holds an id right now, so the one a newer connection displaces (the broker
drops it silently; mosquitto 2.0 sends no DISCONNECT 0x8E) can tell its device why: session taken over.

Everything here runs without yielding (plain dict operations), so a check and the claim that follows it
are one atomic step on the gateway's single thread of greenlets.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

__all__ = [
    "BINDING_MODES",
    "MAX_OFFLINE_BINDINGS",
    "ClientIdBinding",
    "Holder",
    "identity_of",
    "session_lifetime",
]

BINDING_MODES = ("identity", "none")
#: Bindings of offline persistent sessions kept at most; past this the oldest is forgotten (its id can
#: then be claimed again). Bounds the memory a user creating endless persistent client ids can take.
MAX_OFFLINE_BINDINGS = 100_000

REFUSED_BOUND = "bound"
REFUSED_RESERVED = "reserved"


class Holder(Protocol):
    """A connection holding a client id (``ProxiedConnection``)."""

    def taken_over(self) -> None:
        """A newer connection with the same client id is about to reach the broker, which will drop
        this one's session."""


def identity_of(username: str | None, identity: str | None) -> str:
    """Who claims a client id: the user name, else the verified client certificate's identity, else
    "" (anonymous; all anonymous clients are one identity)."""
    if username:
        return f"user:{username}"
    if identity:
        return f"cert:{identity}"
    return ""


@dataclass(slots=True)
class _Entry:
    identity: str
    holder: Holder | None  # the live connection using the id, None while offline
    expires: float  # monotonic time after which an offline binding is void (inf: never)


class ClientIdBinding:
    """The gateway-wide table client id -> identity (see the module docstring)."""

    def __init__(
        self, mode: str = "identity", reserved: Iterable[str] = (), max_offline: int = MAX_OFFLINE_BINDINGS
    ) -> None:
        if mode not in BINDING_MODES:
            raise ValueError(f"client_id_binding must be one of {BINDING_MODES}, got {mode!r}")
        self.mode = mode
        self.reserved = frozenset(r for r in reserved if r)
        self.max_offline = max_offline
        self._table: dict[str, _Entry] = {}
        self._offline: OrderedDict[str, None] = OrderedDict()  # offline ids, oldest first
        self._warned = False

    @classmethod
    def for_settings(cls, settings: Any) -> ClientIdBinding:
        """From the top-level settings: ``[auth] client_id_binding`` and the bridge's client id."""
        auth = getattr(settings, "auth", None)
        mode = str(getattr(auth, "client_id_binding", "identity"))
        bridge_mqtt = getattr(getattr(settings, "bridge", None), "mqtt", None)
        reserved = [bridge_mqtt.client_id] if bridge_mqtt is not None else []
        return cls(mode, reserved)

    def __len__(self) -> int:
        return len(self._table)

    def claim(self, client_id: str, identity: str, holder: Holder, may_take: bool = False) -> str:
        """Take ``client_id`` for ``holder`` (a connection of ``identity``). Returns "" when it may use
        it, else why not: ``"reserved"`` (the bridge's id) or ``"bound"`` (another identity's). An
        empty client id (the broker assigns one) is never bound. A displaced live holder is told."""
        if client_id in self.reserved:
            return REFUSED_RESERVED
        if not client_id:
            return ""
        now = time.monotonic()
        entry = self._table.get(client_id)
        if entry is not None and entry.holder is None and entry.expires <= now:
            self._forget(client_id)
            entry = None
        if entry is None:
            self._table[client_id] = _Entry(identity, holder, now)
            return ""
        if entry.identity != identity and self.mode == "identity" and not may_take:
            return REFUSED_BOUND
        old = entry.holder
        entry.identity = identity
        entry.holder = holder
        self._offline.pop(client_id, None)
        if old is not None and old is not holder:
            old.taken_over()
        return ""

    def release(self, client_id: str, holder: Holder, keep_for: float | None) -> None:
        """``holder`` ended. ``keep_for``: how long the broker keeps its session (seconds; inf: until it
        is taken; 0: not at all), or None when the broker never accepted the connection (the binding
        stays as it was before this claim)."""
        entry = self._table.get(client_id)
        if entry is None or entry.holder is not holder:
            return
        entry.holder = None
        now = time.monotonic()
        if keep_for is not None:
            entry.expires = now + keep_for if keep_for > 0 else now
        if entry.expires <= now:
            self._forget(client_id)
            return
        self._offline[client_id] = None
        self._offline.move_to_end(client_id)
        while len(self._offline) > self.max_offline:
            oldest, _ = self._offline.popitem(last=False)
            self._table.pop(oldest, None)
            if not self._warned:
                self._warned = True
                logger.warning(
                    "more than {} offline client id bindings: forgetting the oldest ones", self.max_offline
                )

    def _forget(self, client_id: str) -> None:
        self._table.pop(client_id, None)
        self._offline.pop(client_id, None)


def session_lifetime(v5: bool, clean_start: bool, session_expiry: int | None) -> float:
    """How long the broker keeps a session after its connection ends, in seconds: 3.1.1 clean session 0
    keeps it until it is taken (inf), clean session 1 not at all; MQTT 5 by its Session Expiry Interval
    (0xFFFFFFFF: never expires)."""
    if not v5:
        return 0.0 if clean_start else math.inf
    expiry = session_expiry or 0
    return math.inf if expiry == 0xFFFFFFFF else float(expiry)
