"""The Router actor: dispatches cross-protocol messages to the handler actors registered for their kind.

Only bridge traffic goes through it (XMPP command -> MQTT publish, MQTT message -> XMPP users, ...);
proxied device bytes never do. Delivery is a ``tell`` per handler, so one sender's messages reach each
handler in the order they were routed.
"""

from __future__ import annotations

from typing import Any

import pykka
from loguru import logger

from .contracts import Message

__all__ = ["Router"]


class Router(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[str, list[pykka.ActorRef[Any]]] = {}
        self._handle: dict[pykka.ActorRef[Any], Any] = {}
        self.routed = 0
        self.unroutable = 0

    def register(self, kind: str, handler: pykka.ActorRef[Any]) -> None:
        routes = self._routes.setdefault(kind, [])
        if handler not in routes:
            routes.append(handler)
        if handler not in self._handle:
            # Built once: a Pykka proxy introspects every attribute of its actor, and building one per
            # routed message was 66 % of the gateway's CPU in bench/xmpp_roundtrip.py.
            self._handle[handler] = handler.proxy().handle

    def unregister(self, kind: str, handler: pykka.ActorRef[Any]) -> None:
        routes = self._routes.get(kind, [])
        if handler in routes:
            routes.remove(handler)
        if not any(handler in refs for refs in self._routes.values()):
            self._handle.pop(handler, None)

    def route(self, message: Message) -> int:
        """Deliver ``message`` to every handler registered for ``message.kind``; returns how many."""
        targets = self._routes.get(message.kind, ())
        delivered = 0
        for ref in list(targets):
            try:
                self._handle[ref].defer(message)
                delivered += 1
            except pykka.ActorDeadError:
                self.unregister(message.kind, ref)
        if delivered:
            self.routed += 1
        else:
            self.unroutable += 1
            logger.debug("no handler for message kind {!r} (topic {!r})", message.kind, message.topic)
        return delivered

    def kinds(self) -> dict[str, int]:
        return {kind: len(refs) for kind, refs in self._routes.items()}
