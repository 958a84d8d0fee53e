"""Builds the Gateway from settings with the listeners and handlers this distribution ships, and the
listener plug-ins installed beside it.

The one place that knows the listener protocols: the shipped listener classes and those registered in the
``ferryman.listeners`` entry-point group, each carrying its settings kind (``cls.kind``, a
``ferryman.config.ListenerKind``). Settings are loaded with those kinds (``load_settings``) and the Gateway
is built with those classes (``build_gateway``): the config layer never imports a protocol.
Third-party handlers are still found by name through the ``ferryman.handlers`` entry-point group."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

import pykka
from loguru import logger

from ferryman.actors.errors import GatewayError
from ferryman.actors.gateway import Gateway
from ferryman.bridge.builtin import AllowAllHandler
from ferryman.bridge.static import StaticHandler
from ferryman.config import ListenerKind, Settings
from ferryman.config import default_settings as _default_settings
from ferryman.config import load_settings as _load_settings
from ferryman.protocols.coap import CoapListener
from ferryman.protocols.http import HttpListener
from ferryman.protocols.mqtt.kind import DEFAULT_LISTENER
from ferryman.protocols.mqtt.listener import MqttListener
from ferryman.protocols.websocket.listener import MqttWsListener
from ferryman.versions import check as check_versions

__all__ = [
    "DEFAULT_LISTENER",
    "LISTENERS",
    "LISTENER_GROUP",
    "build_gateway",
    "default_settings",
    "listener_classes",
    "listener_kinds",
    "load_settings",
]

LISTENER_GROUP = "ferryman.listeners"
#: The shipped listeners, by protocol name; each class carries its settings kind (``cls.kind``).
LISTENERS: dict[str, Any] = {
    "mqtt": MqttListener,
    "mqtt-ws": MqttWsListener,
    "http": HttpListener,
    "coap": CoapListener,
}
HANDLERS: dict[str, Any] = {"allow-all": AllowAllHandler, "static": StaticHandler}


def listener_classes() -> dict[str, Any]:
    """The shipped listener classes and every listener plug-in of the ``ferryman.listeners`` entry-point
    group (a shipped one wins over an entry point of the same name). A plug-in that cannot be loaded, or
    whose class declares no ``kind``, is left out with a warning: a listener naming it gets "not one of"
    with the protocols that are there."""
    classes = dict(LISTENERS)
    for ep in entry_points(group=LISTENER_GROUP):
        if ep.name in classes:
            continue
        try:
            cls = ep.load()
        except Exception as exc:
            logger.warning("listener plug-in {!r} ({}) cannot be loaded: {}", ep.name, ep.value, exc)
            continue
        if not isinstance(getattr(cls, "kind", None), ListenerKind):
            logger.warning(
                "listener plug-in {!r} ({}) declares no settings kind (class attribute `kind`, a "
                "ferryman.config.ListenerKind): left out",
                ep.name,
                ep.value,
            )
            continue
        classes[ep.name] = cls
    return classes


def listener_kinds(classes: Mapping[str, Any] | None = None) -> dict[str, ListenerKind]:
    """The settings kinds of ``classes`` (default: :func:`listener_classes`), by protocol name: what
    :func:`load_settings` hands to the config layer."""
    kinds: dict[str, ListenerKind] = {}
    for name, cls in (listener_classes() if classes is None else classes).items():
        kind: ListenerKind = cls.kind
        kinds[name] = kind if kind.protocol == name else dataclasses.replace(kind, protocol=name)
    return kinds


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    kinds: Mapping[str, ListenerKind] | None = None,
) -> Settings:
    """``ferryman.config.load_settings`` with the listener kinds of this installation (shipped and
    plugged in; or ``kinds``) and the embedded default listener (one MQTT listener on 127.0.0.1:1884)."""
    return _load_settings(
        path,
        env,
        kinds=listener_kinds() if kinds is None else kinds,
        default_listeners=(DEFAULT_LISTENER,),
    )


def default_settings() -> Settings:
    """The embedded defaults: one MQTT listener on 127.0.0.1:1884 in front of tcp://127.0.0.1:1883, allow-all
    authorization, everything else at its default."""
    return _default_settings(kinds=listener_kinds(), default_listeners=(DEFAULT_LISTENER,))


def build_gateway(
    settings: Any,
    *,
    handlers: Sequence[pykka.ActorRef[Any]] = (),
    listeners: Mapping[str, Any] | None = None,
    with_bridge: bool = True,
    reuse_port: bool = False,
) -> Gateway:
    """The Gateway for ``settings`` (from ``load_settings`` or built by hand), not yet started.

    ``handlers``: HandlerActor refs the caller started itself (``MyHandler.start(options=...,
    settings=...)``); they join the chain after the configured auth handler and ``[[handler]]`` tables, and
    ``Gateway.stop()`` leaves them running: the caller stops them (see examples/embedding/).
    ``listeners``: the listener classes by protocol (default: :func:`listener_classes`).
    ``with_bridge``: False leaves the bridge (``[bridge.*]``) out: a worker process other than worker 0
    (``ferryman run --workers N``; the bridge and its MQTT session run in exactly one process).
    ``reuse_port``: listeners bind SO_REUSEPORT sockets, one per worker process.

    Raises ``GatewayError`` when an installed gevent, Pykka, paho-mqtt or aiocoap release is outside the range
    ferryman is tested with (``ferryman.versions``): an embedding program gets the check ``ferryman run``
    makes."""
    from ferryman.bridge_wiring import build_bridge  # imports slixmpp and paho only when called

    problems: list[str] = []
    if not check_versions(problems.append):
        raise GatewayError("; ".join(problems))

    return Gateway(
        settings,
        listener_factories=listener_classes() if listeners is None else listeners,
        handler_factories=HANDLERS,
        components=[build_bridge] if with_bridge else [],
        handlers=handlers,
        reuse_port=reuse_port,
    )
