"""CoAP -> MQTT mode (``target = "mqtt"``): the contract between the coap listener and the bridge.

The same design as the http listener's publish mode (``protocols/http/publish.py``): the listener never
imports the bridge. The bridge (``ferryman/bridge_wiring.py``) offers an :class:`MqttPort` over its MQTT
session and its CoAP handler actor (``bridge/coap_mqtt.py``) under the kind :data:`PORT`; the Gateway hands
it to the listener's constructor (``ListenerServices``, ``actors/services.py``). A POST is one call of
``MqttPort.publish`` and a wait on the acknowledgement, and an Observe registration one ``subscribe``: no
Router hop per request. Every method of the port is called in a greenlet of the hub (the resources reach
it with ``AsyncioHost.in_hub``), never in the asyncio thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from ferryman.protocols.http.publish import Acknowledgement

__all__ = ["PORT", "Acknowledgement", "Deliver", "MqttPort"]

#: The kind under which the bridge offers its :class:`MqttPort` (``ListenerServices.ports``).
PORT = "coap.publish"

#: Receives one MQTT message (topic, payload, headers) of a subscription. Called in the hub, in the
#: bridge actor's greenlet: it must not block (hand the message over with ``AsyncioHost.call_soon``).
Deliver = Callable[[str, bytes, Mapping[str, str]], None]


class MqttPort(Protocol):
    """What the bridge hands a publish-mode coap listener (every method: hub greenlets only)."""

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Acknowledgement:
        """Queues one publish on the bridge's MQTT session."""
        ...

    def publish_many(self, items: list[tuple[str, bytes, int, bool]]) -> list[Acknowledgement]:
        """``publish`` for each (topic, payload, qos, retain), in order; the listener's hot path."""
        ...

    def subscribe(self, topic_filter: str, deliver: Deliver, timeout: float) -> tuple[int, bool]:
        """Adds ``deliver`` as a receiver of ``topic_filter``; the first receiver of a filter subscribes
        the bridge's MQTT session (waiting up to ``timeout`` for the SUBACK). Returns (a key for
        :meth:`unsubscribe`, whether the broker has the subscription now)."""
        ...

    def unsubscribe(self, key: int) -> None:
        """Removes a receiver; the last one of a filter unsubscribes the MQTT session (unless the filter
        was subscribed by another part of the bridge before, e.g. an XMPP user)."""
        ...
