"""Builds the bridge from ``[bridge.*]``: the bridge's MQTT session, the CoAP -> MQTT handler actor (for
publish-mode coap listeners), the asyncio host and the XMPP session on it, and the XMPP bridge handler
actor, registered with the Router for the messages they handle. A Gateway component (see
``actors/gateway.py``): it returns what it started, in order (the Gateway stops them in reverse), and the
ports it offers to publish-mode http and coap listeners, which the Gateway hands to their constructors."""

from __future__ import annotations

from typing import Any

from ferryman.actors.asyncio_host import HostLease
from ferryman.actors.gateway import Built, Gateway
from ferryman.bridge.authz import BridgeAuthz
from ferryman.bridge.coap_mqtt import CoapMqttBridge, MqttCoapPort
from ferryman.bridge.http_mqtt import MqttPublisher
from ferryman.bridge.smartgrid import SmartgridRules
from ferryman.bridge.smartgrid_handler import SmartgridHandler
from ferryman.bridge.store import Store
from ferryman.bridge.xmpp_mqtt import MQTT_MESSAGE, XMPP_CHAT, CommandLimits, XmppMqttBridge
from ferryman.protocols.coap.publish import PORT as COAP_PUBLISH_PORT
from ferryman.protocols.http.publish import PORT as HTTP_PUBLISH_PORT
from ferryman.protocols.mqtt.client import MqttClientActor
from ferryman.protocols.xmpp.session import XmppSession

__all__ = ["build_bridge"]


def build_bridge(gateway: Gateway) -> Built:
    bridge = gateway.settings.bridge
    if bridge.mqtt is None:
        return Built([])
    assert gateway.router is not None
    route = gateway.router.proxy().route
    parts: list[Any] = []
    if bridge.xmpp is not None:
        lease = HostLease()  # the loop CoAP listeners share
        host = lease.host
        parts.append(lease)
    mqtt = MqttClientActor.start(
        bridge.mqtt.url,
        bridge.mqtt.client_id,
        lambda message: route.defer(message),
        username=bridge.mqtt.username or None,
        password=bridge.mqtt.password or None,
    )
    parts.append(mqtt)
    coap = CoapMqttBridge.start(mqtt=mqtt, settings=gateway.settings, router=gateway.router)
    parts.append(coap)
    gateway.router.proxy().register(MQTT_MESSAGE, coap).get(timeout=5)  # messages for CoAP observers
    # What publish-mode listeners publish (and, CoAP, observe) through; the Gateway hands them over.
    ports = {HTTP_PUBLISH_PORT: MqttPublisher(mqtt), COAP_PUBLISH_PORT: MqttCoapPort(mqtt, coap)}
    if bridge.xmpp is None:
        return Built(parts, ports)
    xmpp = XmppSession.start(bridge.xmpp, host, gateway.router, ca_file=bridge.xmpp.ca_file or None)
    parts.append(xmpp)
    rules = {r.jid: (r.publish, r.subscribe) for r in bridge.xmpp.rules}
    smartgrid: Any = None
    smartgrid_root = "smartgrid/"
    marks: Store | None = None
    if bridge.smartgrid is not None:
        # The second handler actor: the main bridge hands it GET chats and messages under its root.
        smartgrid_root = SmartgridRules(bridge.smartgrid.root).root
        smartgrid = SmartgridHandler.start(
            xmpp=xmpp, root=smartgrid_root, settings=gateway.settings, router=gateway.router
        )
        parts.append(smartgrid)
        marks = Store(_marks_path(bridge.xmpp.store))
    handler = XmppMqttBridge.start(
        xmpp=xmpp,
        mqtt=mqtt,
        store=Store(bridge.xmpp.store),
        authz=BridgeAuthz(
            bridge.xmpp.allowed_jids,
            rules,
            default_publish=bridge.xmpp.default_publish,
            default_subscribe=bridge.xmpp.default_subscribe,
        ),
        settings=gateway.settings,
        router=gateway.router,
        smartgrid=smartgrid,
        smartgrid_root=smartgrid_root,
        smartgrid_marks=marks,
        limits=CommandLimits.from_settings(bridge.xmpp),
        metrics=gateway.metrics,
    )
    parts.append(handler)
    router = gateway.router.proxy()
    router.register(XMPP_CHAT, handler).get(timeout=5)
    router.register(MQTT_MESSAGE, handler).get(timeout=5)
    return Built(parts, ports)


def _marks_path(store: str) -> str:
    """Where the smartgrid marks (which subscriptions a GET made) persist: a SQLite file next to the store."""
    if store == ":memory:" or store.startswith("file:"):
        return ":memory:"
    return store + ".smartgrid"
