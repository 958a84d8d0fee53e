"""The ``coap`` listener kind: what a ``[[listener]]`` with ``protocol = "coap"`` may hold (see
``ferryman/config/listener_kinds.py``). ``CoapListener.kind`` carries it to the wiring."""

from __future__ import annotations

from ferryman.config import PUBLISH_TARGET, ListenerKind, shared_except

__all__ = ["COAP_KIND"]

COAP_KIND = ListenerKind(
    protocol="coap",
    transport="udp",
    doc='a CoAP proxy (optionally DTLS) in front of a CoAP server, or (target = "mqtt") CoAP -> MQTT',
    target_schemes=("coap", "coaps", PUBLISH_TARGET),
    # Every shared key the loader has always accepted on a CoAP listener (psk: DTLS pre-shared keys).
    shared_keys=shared_except(
        "path_prefix",
        "allowed_origins",
        "bypass",
        "proxy_protocol",
        "trusted_proxies",
        "target_proxy_protocol",
    ),
)
