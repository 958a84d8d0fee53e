"""The ``mqtt`` listener kind: what a ``[[listener]]`` with ``protocol = "mqtt"`` may hold (see
``ferryman/config/listener_kinds.py``). ``MqttListener.kind`` carries it to the wiring."""

from __future__ import annotations

from collections.abc import Mapping

from ferryman.config import Kind, ListenerKey, ListenerKind, shared_except

__all__ = ["DEFAULT_LISTENER", "MQTT_KIND", "PARK_IDLE_AFTER"]

PARK_IDLE_AFTER = 5.0

MQTT_KIND = ListenerKind(
    protocol="mqtt",
    doc="MQTT 3.1 / 3.1.1 / 5 over TCP (optionally TLS), proxied to a broker",
    target_schemes=("tcp", "tls"),
    # Every shared key the loader has always accepted on an MQTT listener (some are ignored by it).
    shared_keys=shared_except("path_prefix", "psk", "allowed_origins", "bypass"),
    keys=(
        ListenerKey(
            "park_idle_after",
            Kind.FLOAT,
            PARK_IDLE_AFTER,
            "seconds a connection's direction may wait for data before its greenlet is given back until "
            "data arrives (memory per idle connection); 0 = never",
            minimum=0.0,
        ),
    ),
)

# The embedded default listener, used when a settings file has no `listener` key at all (write
# `listener = []` for none). Loopback on purpose: the default auth handler is allow-all.
DEFAULT_LISTENER: Mapping[str, str] = {
    "name": "mqtt",
    "protocol": "mqtt",
    "address": "127.0.0.1:1884",
    "target": "tcp://127.0.0.1:1883",
}
