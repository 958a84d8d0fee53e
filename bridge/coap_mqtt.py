"""The CoAP -> MQTT bridge handler actor: publish-mode coap listeners (``target = "mqtt"``) publish and
subscribe through the bridge's own MQTT session (``MqttBridgeClient``).

The bridge (``ferryman/bridge_wiring.py``) offers an :class:`MqttCoapPort` over this actor under
:data:`ferryman.protocols.coap.publish.PORT` (the Gateway hands it to each publish-mode coap listener's
constructor, as it does the ``bridge/http_mqtt.py`` publisher for http). The actor is registered with the
Router for ``mqtt.message`` (the messages of the bridge's MQTT session, which it hands to the receivers of
matching filters: CoAP observations).

Subscriptions are reference-counted per filter in a subscription hub (``actors/subscriptions.py``, whose
holders here are receiver keys): the first receiver subscribes the MQTT session, the last one leaving
unsubscribes it. The session counts its owners in a hub of its own: a filter the XMPP bridge holds too is
subscribed once on the broker and kept until both let go.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from typing import Any

import pykka
from loguru import logger

from ferryman.actors.contracts import Message
from ferryman.actors.rules import RuleActor
from ferryman.actors.subscriptions import SubscriptionHub
from ferryman.actors.topics import validate_topic_filter
from ferryman.protocols.coap.publish import Deliver
from ferryman.protocols.mqtt.bridge_client import Delivery

from .http_mqtt import MqttPublisher

__all__ = ["MQTT_MESSAGE", "CoapMqttBridge", "MqttCoapPort"]

MQTT_MESSAGE = "mqtt.message"
#: Receiver keys, for every port and bridge actor of the process (``next`` on it is atomic).
_KEYS = itertools.count(1)
OWNER = "coap"  # this bridge's name for its filters on the shared MQTT session


class MqttCoapPort:
    """A ``protocols.coap.publish.MqttPort`` over the bridge's MQTT session and this handler actor."""

    def __init__(self, mqtt: pykka.ActorRef[Any], bridge: pykka.ActorRef[Any], timeout: float = 5.0) -> None:
        self._publisher = MqttPublisher(mqtt, timeout)
        self._publish_many = mqtt.proxy().publish_many  # built once: proxies introspect the actor
        bridge_proxy = bridge.proxy()
        self._add = bridge_proxy.add_receiver
        self._remove = bridge_proxy.remove_receiver
        self.timeout = timeout

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Delivery:
        return self._publisher.publish(topic, payload, qos, retain)

    def publish_many(self, items: list[tuple[str, bytes, int, bool]]) -> list[Delivery]:
        """Queues every publish on the MQTT session in one actor message (``MqttBridgeClient.publish_many``)
        and returns their deliveries: one wake-up of the session actor and of paho's loop for the lot."""
        try:
            out: list[Delivery] = self._publish_many(items).get(timeout=self.timeout)
        except pykka.ActorDeadError:
            return [Delivery.failed("the bridge's MQTT session is not running")] * len(items)
        except pykka.Timeout:
            return [Delivery.failed("the bridge's MQTT session did not answer")] * len(items)
        return out

    def subscribe(self, topic_filter: str, deliver: Deliver, timeout: float) -> tuple[int, bool]:
        # The key is made here, not by the actor: when the ask times out the actor may still add the
        # receiver, and the caller's unsubscribe(key) (queued after it) then removes it: no receiver, and
        # so no broker subscription, is left behind.
        key = next(_KEYS)
        try:
            key, suback = self._add(topic_filter, deliver, key).get(timeout=self.timeout)
        except pykka.ActorDeadError:
            return 0, False
        except pykka.Timeout:
            return key, False
        if suback is None:
            return key, True  # the filter was subscribed already
        try:
            return key, bool(suback.get(timeout=timeout))
        except (pykka.ActorDeadError, pykka.Timeout):
            return key, False

    def unsubscribe(self, key: int) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self._remove.defer(key)


class CoapMqttBridge(RuleActor):
    name = "coap-mqtt"

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
        self._mqtt = mqtt.proxy()
        self._receivers: dict[int, tuple[str, Deliver]] = {}
        self._hub: SubscriptionHub[int] = SubscriptionHub()  # receiver key -> its one filter

    def handle(self, message: Message) -> None:
        if message.kind == MQTT_MESSAGE:
            self._deliver(message)

    def _deliver(self, message: Message) -> None:
        receivers = self._receivers
        for key in self._hub.holders_for(message.topic):
            entry = receivers.get(key)
            if entry is None:
                continue
            topic_filter, deliver = entry
            try:
                deliver(message.topic, message.payload, message.headers)
            except Exception:
                logger.exception("bridge: a CoAP receiver of {} failed", topic_filter)

    def add_receiver(
        self, topic_filter: str, deliver: Deliver, key: int | None = None
    ) -> tuple[int, pykka.Future[bool] | None]:
        """Returns (the receiver's key, the future of the MQTT subscription if this call made one). ``key``:
        the caller's (``MqttCoapPort`` makes them), else a new one."""
        if key is None:
            key = next(_KEYS)
        if key in self._receivers:
            self.remove_receiver(key)
        if validate_topic_filter(topic_filter):  # the session would refuse it too: nothing is recorded
            refused: pykka.Future[bool] = pykka.ThreadingFuture()
            refused.set(False)
            return key, refused
        self._receivers[key] = (topic_filter, deliver)
        if not self._hub.add(key, topic_filter):
            return key, None
        # The session counts its owners: if XMPP users want this filter too, no second SUBSCRIBE goes out,
        # and when the last CoAP observer leaves the filter stays for them (and the other way round).
        logger.info("bridge: subscribing {} for CoAP observers", topic_filter)
        future: pykka.Future[bool] = self._mqtt.subscribe(topic_filter, owner=OWNER)
        return key, future

    def remove_receiver(self, key: int) -> None:
        entry = self._receivers.pop(key, None)
        if entry is None:
            return
        topic_filter = entry[0]
        if not self._hub.remove(key, topic_filter):
            return
        logger.info("bridge: unsubscribing {}: its last CoAP observer left", topic_filter)
        self._mqtt.unsubscribe.defer(topic_filter, owner=OWNER)

    def receivers(self) -> dict[str, int]:
        """Filter -> how many CoAP receivers (for tests and diagnostics)."""
        return {f: self._hub.count(f) for f in self._hub.filters()}
