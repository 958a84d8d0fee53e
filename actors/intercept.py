"""One way to run a grant's interceptors, for every protocol that carries publishes.

MQTT and MQTT-WS hand interceptors the packets they decoded (every packet type). HTTP publish, CoAP publish,
XMPP publish and the downlinks of the bridges (CoAP notifications, chat messages) hand them an MQTT
``Publish`` (``protocols/mqtt/packets.py``): the gateway's common currency, the message as it will reach or
came from the broker. ``session.protocol`` says where it came from. An interceptor returns the packet (the
same or a new one) or None to drop it; a dropped publish is answered to its sender as delivered.
"""

from __future__ import annotations

from typing import Any

from .contracts import Direction, Grant, Session

__all__ = ["run_interceptors"]


def run_interceptors(grant: Grant, session: Session, packet: Any, direction: Direction) -> Any | None:
    """``packet`` after every interceptor of ``grant`` in chain order; None as soon as one drops it."""
    for interceptor in grant.interceptors:
        packet = interceptor.intercept(session, packet, direction)
        if packet is None:
            return None
    return packet
