"""What the Gateway hands each listener beside its settings, handler chain and metrics: the collaborators it
built (``listener_cls.start(settings, chain, metrics, services)``). Nothing is found by look-up: a listener
uses what is in here or does without.

A Gateway component (the bridge, ``ferryman/bridge_wiring.py``) returns a :class:`Built`: the parts it
started and the ports it offers to listeners, by kind (``"http.publish"``: a
``protocols.http.publish.Publisher``; ``"coap.publish"``: a ``protocols.coap.publish.MqttPort``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pykka

from .asyncio_host import SharedHost
from .errors import GatewayError

__all__ = ["Built", "ListenerServices"]


@dataclass(frozen=True)
class Built:
    """What a Gateway component started (actor refs or objects with ``stop()``, in start order) and the
    ports it offers to listeners, by kind. ``handlers``: handler actors it started for its own sessions (the
    bridge's XMPP JID rules, in the chain its XMPP users are asked through, ``Gateway.chain.with_first``):
    the Gateway reloads them with its own handlers and stops them after the parts."""

    parts: list[Any]
    ports: Mapping[str, Any] = field(default_factory=dict)
    handlers: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class ListenerServices:
    """The Gateway's collaborators for its listeners: its Router, the ports its components offer, and
    its asyncio host (``asyncio.lease()``, for listeners built on asyncio libraries: CoAP).

    ``reuse_port``: this gateway is one worker of several (``ferryman run --workers N``): a TCP listener
    binds its own ``SO_REUSEPORT`` socket (``protocols/sockets.py``), one of a group the kernel spreads
    connections over. A listener class says whether it can run in every worker with a classmethod
    ``in_every_worker(settings) -> bool``; without one it runs in worker 0 only."""

    router: pykka.ActorRef[Any] | None = None
    ports: Mapping[str, Any] = field(default_factory=dict)
    asyncio: SharedHost = field(default_factory=SharedHost)
    reuse_port: bool = False

    def publish_port(self, kind: str, listener: str) -> Any:
        """The port of ``kind`` for a publish-mode listener (``target = "mqtt"``); GatewayError when the
        bridge's MQTT session, which offers it, is not part of this gateway."""
        port = self.ports.get(kind)
        if port is None:
            raise GatewayError(
                f'listener {listener!r}: publish mode (target = "mqtt") needs the bridge\'s MQTT '
                "session: add a [bridge.mqtt] table"
            )
        return port
