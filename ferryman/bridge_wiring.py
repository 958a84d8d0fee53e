"""Builds the bridge from ``[bridge.*]``: the bridge's MQTT session, the CoAP -> MQTT rule actor (for
publish-mode coap listeners), the asyncio host and the XMPP session on it, the XMPP bridge rule actor and
the rule sets (``[bridge.smartgrid]``), registered with the Router for the messages they handle. A Gateway
component (see ``actors/gateway.py``): it returns what it started, in order (the Gateway stops them in
reverse), the ports it offers to publish-mode http and coap listeners, which the Gateway hands to their
constructors, and the handler it put in front of the Gateway's chain for XMPP users (the ``[bridge.xmpp]``
JID rules, ``XmppJidHandler``), which the Gateway reloads on SIGHUP with its own handlers.

Rule sets are found by name: the built-in table ``RULES``, else the entry-point group ``ferryman.rules``;
each is a ``RuleActor`` class started with ``start_rule(RuleContext)``, given the ports ``"xmpp"`` (the
XMPP session actor) and ``"mqtt"`` (the bridge's MQTT session actor)."""

from __future__ import annotations

from typing import Any

import pykka

from ferryman.actors.gateway import Built, Gateway, GatewayError, load_entry_point
from ferryman.actors.rules import RULES_GROUP, RuleActor, RuleContext
from ferryman.bridge.authz import XmppJidHandler
from ferryman.bridge.coap_mqtt import CoapMqttBridge, MqttCoapPort
from ferryman.bridge.http_mqtt import MqttPublisher
from ferryman.bridge.smartgrid_handler import SmartgridHandler
from ferryman.bridge.store import Store
from ferryman.bridge.xmpp_mqtt import (
    MQTT_MESSAGE,
    XMPP_CHAT,
    XMPP_COMMAND,
    XMPP_RULE_REPLAY,
    XMPP_SUBSCRIBE,
    CommandLimits,
    XmppMqttBridge,
)
from ferryman.protocols.coap.publish import PORT as COAP_PUBLISH_PORT
from ferryman.protocols.http.publish import PORT as HTTP_PUBLISH_PORT
from ferryman.protocols.mqtt.bridge_client import MqttBridgeClient
from ferryman.protocols.xmpp.session import XmppSession

__all__ = ["RULES", "build_bridge", "rule_class"]

#: The rule sets this distribution ships (also registered in ``ferryman.rules``).
RULES: dict[str, type[RuleActor]] = {"smartgrid": SmartgridHandler}


def rule_class(name: str) -> type[RuleActor]:
    cls: Any = RULES.get(name) or load_entry_point(RULES_GROUP, name)
    if not (isinstance(cls, type) and issubclass(cls, RuleActor)):
        raise GatewayError(f"rule set {name!r} is not a RuleActor subclass: {cls!r}")
    return cls


def build_bridge(gateway: Gateway) -> Built:
    bridge = gateway.settings.bridge
    if bridge.mqtt is None:
        return Built([])
    assert gateway.router is not None
    route = gateway.router.proxy().route
    parts: list[Any] = []
    if bridge.xmpp is not None:
        lease = gateway.asyncio.lease()  # the loop CoAP listeners share
        host = lease.host
        parts.append(lease)
    mqtt = MqttBridgeClient.start(
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
    # XMPP users are asked through the Gateway's chain with the [bridge.xmpp] JID rules in front.
    jids = XmppJidHandler.start(settings=gateway.settings)
    try:
        return _xmpp_parts(gateway, parts, ports, mqtt, xmpp, jids)
    except BaseException:
        jids.stop()  # not handed over yet: the Gateway does not know it
        raise


def _xmpp_parts(
    gateway: Gateway,
    parts: list[Any],
    ports: dict[str, Any],
    mqtt: pykka.ActorRef[Any],
    xmpp: pykka.ActorRef[Any],
    jids: pykka.ActorRef[Any],
) -> Built:
    """The XMPP bridge rule actor and the rule sets, asking XMPP users through the chain with ``jids``."""
    bridge = gateway.settings.bridge
    assert gateway.router is not None and gateway.chain is not None and bridge.xmpp is not None
    chain = gateway.chain.with_first([jids])
    rule_sets = ["smartgrid"] if bridge.smartgrid is not None else []
    handler = XmppMqttBridge.start(
        xmpp=xmpp,
        mqtt=mqtt,
        store=Store(bridge.xmpp.store),
        chain=chain,
        settings=gateway.settings,
        router=gateway.router,
        rule_marks={name: Store(_marks_path(bridge.xmpp.store, name)) for name in rule_sets},
        limits=CommandLimits.from_settings(bridge.xmpp),
        metrics=gateway.metrics,
    )
    parts.append(handler)
    router = gateway.router.proxy()
    for kind in (XMPP_CHAT, XMPP_COMMAND, XMPP_SUBSCRIBE, XMPP_RULE_REPLAY, MQTT_MESSAGE):
        router.register(kind, handler).get(timeout=5)
    context = RuleContext(gateway.settings, gateway.router, ports={"xmpp": xmpp, "mqtt": mqtt})
    for name in rule_sets:
        parts.extend(rule_class(name).start_rule(context))
    return Built(parts, ports, handlers=[jids])


def _marks_path(store: str, rule: str) -> str:
    """Where a rule set's marks (which subscriptions it made) persist: a SQLite file next to the store."""
    if store == ":memory:" or store.startswith("file:"):
        return ":memory:"
    return f"{store}.{rule}"
