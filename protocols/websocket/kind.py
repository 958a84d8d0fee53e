"""The ``mqtt-ws`` listener kind: what a ``[[listener]]`` with ``protocol = "mqtt-ws"`` may hold (see
``ferryman/config/listener_kinds.py``). ``MqttWsListener.kind`` carries it to the wiring."""

from __future__ import annotations

from collections.abc import Iterable

from ferryman.config import KindIssue, ListenerKind, ListenerSettings, shared_except

__all__ = ["MQTT_WS_KIND"]


def _checks(settings: ListenerSettings) -> Iterable[KindIssue]:
    if settings.target_proxy_protocol and settings.parsed_target.scheme in ("ws", "wss"):
        yield ("target_proxy_protocol", "is for tcp:// and tls:// targets (a WebSocket target gets none)")


MQTT_WS_KIND = ListenerKind(
    protocol="mqtt-ws",
    doc="MQTT over WebSocket (optionally TLS), proxied to a broker over WebSocket or TCP",
    target_schemes=("ws", "wss", "tcp", "tls"),
    # Every shared key the loader has always accepted on an MQTT-over-WebSocket listener.
    shared_keys=shared_except("psk", "bypass"),
    validate=_checks,
)
