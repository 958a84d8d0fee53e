"""The ``http`` listener kind: what a ``[[listener]]`` with ``protocol = "http"`` may hold (see
``ferryman/config/listener_kinds.py``). ``HttpListener.kind`` carries it to the wiring."""

from __future__ import annotations

from ferryman.config import PUBLISH_TARGET, ListenerKind, shared_except

__all__ = ["HTTP_KIND"]

HTTP_KIND = ListenerKind(
    protocol="http",
    doc='an authenticating HTTP reverse proxy, or (target = "mqtt") POST -> MQTT publish',
    target_schemes=("http", "https", PUBLISH_TARGET),
    # Every shared key the loader has always accepted on an HTTP listener.
    shared_keys=shared_except("psk", "allowed_origins", "target_proxy_protocol"),
)
