"""The HTTP -> MQTT bridge handler actor: publish-mode http listeners (``target = "mqtt"``) publish through
the bridge's own MQTT session (``MqttClientActor``).

It is registered with the Router for :data:`ferryman.protocols.http.publish.ATTACH`. A publish-mode listener
routes that message once when it starts, with its actor URN as ``source``; this actor answers by telling
the listener a :class:`MqttPublisher`. Each request then costs one future on the MQTT session actor
(``publish_async``) and a wait on the broker's acknowledgement in the request's own greenlet, instead of a
Router -> handler -> MQTT session -> handler -> listener round of messages (bench/http_publish.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pykka
from loguru import logger

from ferryman.actors.contracts import Message
from ferryman.actors.handler import HandlerActor
from ferryman.protocols.http.publish import ATTACH
from ferryman.protocols.mqtt.client import Delivery

__all__ = ["HttpMqttBridge", "MqttPublisher"]


class MqttPublisher:
    """A ``protocols.http.publish.Publisher`` over the bridge's ``MqttClientActor``."""

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


class HttpMqttBridge(HandlerActor):
    name = "http-mqtt"

    def __init__(
        self,
        *,
        mqtt: pykka.ActorRef[Any],
        options: Mapping[str, Any] | None = None,
        settings: Any = None,
        router: Any = None,
    ) -> None:
        super().__init__(options=options, settings=settings, router=router)
        self.mqtt = mqtt

    def handle(self, message: Message) -> None:
        if message.kind != ATTACH:
            return
        listener = pykka.ActorRegistry.get_by_urn(message.source)
        if listener is None:
            logger.warning("bridge: publish-mode listener {!r} is gone before it was attached", message.topic)
            return
        listener.proxy().attach_publisher.defer(MqttPublisher(self.mqtt))
