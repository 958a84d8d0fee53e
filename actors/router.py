"""The Router actor: dispatches cross-protocol messages to the rule actors registered for their kind.

Only bridge traffic goes through it (XMPP command -> MQTT publish, MQTT message -> XMPP users, ...);
proxied device bytes never do. Delivery is a ``tell`` per rule actor, so one sender's messages reach each
rule actor in the order they were routed.

A route is a kind, a rule actor (``actors/rules.py`` ``RuleActor``, or any actor with a ``handle(message)``
method) and optionally:

- ``match``: a predicate on the message (``Message -> bool``), run in the Router: keep it cheap, pure and
  free of I/O (``lambda m: m.topic.startswith("smartgrid/")``). Without one, every message of the kind
  matches.
- ``claim``: a matching claiming route takes the message for itself: it goes to the claiming routes that
  match, and not to the others of its kind. That is how a rule set owns some chat commands (its routes
  claim them) while the bridge's catch-all route gets every other one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
from loguru import logger

from .contracts import Message

__all__ = ["Match", "Router"]

#: A route's predicate on the messages of its kind.
Match = Callable[[Message], bool]


@dataclass(frozen=True, slots=True)
class _Route:
    ref: pykka.ActorRef[Any]
    match: Match | None
    claim: bool


class Router(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[str, list[_Route]] = {}
        # Per kind, whether any route has a predicate or claims: the plain kinds skip that work per message.
        self._selective: dict[str, bool] = {}
        self._handle: dict[pykka.ActorRef[Any], Any] = {}
        self.routed = 0
        self.unroutable = 0

    def register(
        self, kind: str, handler: pykka.ActorRef[Any], match: Match | None = None, claim: bool = False
    ) -> None:
        """Route messages of ``kind`` (those ``match`` accepts, when given) to ``handler``; ``claim``: and
        to no route of the kind that does not claim them. Registering the same (kind, handler) again
        replaces its route."""
        if not callable(getattr(handler.actor_class, "handle", None)):
            raise TypeError(f"{handler.actor_class.__name__} has no handle(message): it cannot be routed to")
        routes = [r for r in self._routes.get(kind, []) if r.ref != handler]
        routes.append(_Route(handler, match, claim))
        self._routes[kind] = routes
        self._selective[kind] = any(r.match is not None or r.claim for r in routes)
        if handler not in self._handle:
            # Built once: a Pykka proxy introspects every attribute of its actor, and building one per
            # routed message was 66 % of the gateway's CPU in bench/xmpp_roundtrip.py.
            self._handle[handler] = handler.proxy().handle

    def unregister(self, kind: str, handler: pykka.ActorRef[Any]) -> None:
        routes = [r for r in self._routes.get(kind, []) if r.ref != handler]
        self._routes[kind] = routes
        self._selective[kind] = any(r.match is not None or r.claim for r in routes)
        if not any(r.ref == handler for rs in self._routes.values() for r in rs):
            self._handle.pop(handler, None)

    def _targets(self, message: Message, routes: list[_Route]) -> list[pykka.ActorRef[Any]]:
        claimed: list[pykka.ActorRef[Any]] = []
        others: list[pykka.ActorRef[Any]] = []
        for r in routes:
            if r.match is not None:
                try:
                    if not r.match(message):
                        continue
                except Exception as exc:  # a predicate's bug: that route does not match
                    name = r.ref.actor_class.__name__
                    logger.opt(exception=exc).error("route predicate of {} failed", name)
                    continue
            (claimed if r.claim else others).append(r.ref)
        return claimed or others

    def route(self, message: Message) -> int:
        """Deliver ``message`` to every rule actor its routes select; returns how many."""
        routes = self._routes.get(message.kind)
        if not routes:
            targets: list[pykka.ActorRef[Any]] = []
        elif self._selective[message.kind]:
            targets = self._targets(message, routes)
        else:
            targets = [r.ref for r in routes]
        delivered = 0
        for ref in targets:
            try:
                self._handle[ref].defer(message)
                delivered += 1
            except pykka.ActorDeadError:
                self.unregister(message.kind, ref)
        if delivered:
            self.routed += 1
        else:
            self.unroutable += 1
            logger.debug("no rule actor for message kind {!r} (topic {!r})", message.kind, message.topic)
        return delivered

    def kinds(self) -> dict[str, int]:
        return {kind: len(routes) for kind, routes in self._routes.items() if routes}
