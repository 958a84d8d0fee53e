"""The ``mqtt-ws`` listener kind: what a ``[[listener]]`` with ``protocol = "mqtt-ws"`` may hold (see
``ferryman/config/listener_kinds.py``). ``MqttWsListener.kind`` carries it to the wiring."""

from __future__ import annotations

from ferryman.config import ListenerKind, shared_except

__all__ = ["MQTT_WS_KIND"]

MQTT_WS_KIND = ListenerKind(
    protocol="mqtt-ws",
    doc="MQTT over WebSocket (optionally TLS), proxied to a broker over WebSocket or TCP",
    target_schemes=("ws", "wss", "tcp", "tls"),
    # Every shared key the loader has always accepted on an MQTT-over-WebSocket listener.
    shared_keys=shared_except("psk", "bypass"),
)
