"""Builds the Gateway from settings with the listeners and handlers this distribution ships.

Third-party handlers and listeners are still found by name through the entry-point groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pykka

from ferryman.actors.gateway import Gateway
from ferryman.bridge.builtin import AllowAllHandler
from ferryman.bridge.static import StaticHandler
from ferryman.protocols.coap import CoapListener
from ferryman.protocols.http import HttpListener
from ferryman.protocols.mqtt.listener import MqttListener
from ferryman.protocols.websocket.listener import MqttWsListener

__all__ = ["LISTENERS", "build_gateway"]

LISTENERS: dict[str, Any] = {
    "mqtt": MqttListener,
    "mqtt-ws": MqttWsListener,
    "http": HttpListener,
    "coap": CoapListener,
}
HANDLERS: dict[str, Any] = {"allow-all": AllowAllHandler, "static": StaticHandler}


def build_gateway(settings: Any, *, handlers: Sequence[pykka.ActorRef[Any]] = ()) -> Gateway:
    """The Gateway for ``settings`` (from ``load_settings`` or built by hand), not yet started.

    ``handlers``: HandlerActor refs the caller started itself (``MyHandler.start(options=...,
    settings=...)``); they join the chain after the configured auth handler and ``[[handler]]`` tables, and
    ``Gateway.stop()`` leaves them running: the caller stops them (see examples/embedding/)."""
    from ferryman.bridge_wiring import build_bridge  # imports slixmpp and paho only when called

    return Gateway(
        settings,
        listener_factories=LISTENERS,
        handler_factories=HANDLERS,
        components=[build_bridge],
        handlers=handlers,
    )
