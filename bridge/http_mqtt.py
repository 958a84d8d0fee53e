"""HTTP -> MQTT: publish-mode http listeners (``target = "mqtt"``) publish through the bridge's own MQTT
session (``MqttBridgeClient``).

The bridge (``ferryman/bridge_wiring.py``) offers a :class:`MqttPublisher` under
:data:`ferryman.protocols.http.publish.PORT`; the Gateway hands it to each publish-mode http listener's
constructor. Each request then costs one future on the MQTT session actor (``publish_async``) and a wait on
the broker's acknowledgement in the request's own greenlet, instead of a Router -> handler -> MQTT session ->
handler -> listener round of messages (bench/http_publish.py).
"""

from __future__ import annotations

from typing import Any

import pykka

from ferryman.protocols.mqtt.bridge_client import Delivery

__all__ = ["MqttPublisher"]


class MqttPublisher:
    """A ``protocols.http.publish.Publisher`` over the bridge's ``MqttBridgeClient``."""

    def __init__(self, mqtt: pykka.ActorRef[Any], timeout: float = 5.0) -> None:
        self._publish_async = mqtt.proxy().publish_async  # built once: proxies introspect the actor
        self.timeout = timeout

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Delivery:
        try:
            delivery: Delivery = self._publish_async(topic, payload, qos, retain).get(timeout=self.timeout)
        except pykka.ActorDeadError:
            return Delivery.failed("the bridge's MQTT session is not running")
        except pykka.Timeout:
            return Delivery.failed("the bridge's MQTT session did not answer")
        return delivery
