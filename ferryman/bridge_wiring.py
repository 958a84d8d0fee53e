"""Builds the bridge from ``[bridge.*]``: the bridge's MQTT session, the CoAP -> MQTT rule actor (for
publish-mode coap listeners), the asyncio host and the XMPP session on it, the XMPP bridge rule actor and
the rule sets (``[bridge.smartgrid]``), registered with the Router for the messages they handle. A Gateway
component (see ``actors/gateway.py``): it returns what it started, in order (the Gateway stops them in
reverse), the ports it offers to publish-mode http and coap listeners, which the Gateway hands to their
constructors, and the handler it put in front of the Gateway's chain for XMPP users (the ``[bridge.xmpp]``
JID rules, ``XmppJidHandler``), which the Gateway reloads on SIGHUP with its own handlers.

Rule sets are found by name: the built-in table ``RULES``, else the entry-point group ``ferryman.rules``;
each is a ``RuleActor`` class started with ``start_rule(RuleContext)``, given the ports ``"xmpp"`` (the
XMPP session actor) and ``"mqtt"`` (the bridge's MQTT session actor).

With ``[cluster] redis`` and ``[bridge.xmpp]`` (``_clustered``), the XMPP bridge runs active/standby across
the replicas that share the Redis: an ``ActiveStandbyBridge`` (``bridge/lease.py``) holds or waits for the
lease ``<key_prefix>bridge:<client_id>:lease`` and, while it holds it, runs the parts that must exist once
across the replicas — the bridge's MQTT session with ``[bridge.mqtt] client_id`` (one persistent broker
session, connected only once the parts that take its messages are in place), the XMPP session (a XEP-0114
component may be connected once), the XMPP bridge rule actor with its subscriptions in Redis
(``RedisStore``, writes fenced by the lease) and the rule sets. What every replica runs for itself stays
outside the lease: the JID rules handler, the asyncio host and, for publish-mode http / coap listeners,
an MQTT session of its own (``<client_id>-<host>-<pid>-<random>``, no session kept after it) with the CoAP
bridge."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any

import gevent
import pykka
from loguru import logger

from ferryman.actors.gateway import Built, Gateway, GatewayError, load_entry_point
from ferryman.actors.handler import HandlerChain
from ferryman.actors.rules import RULES_GROUP, RuleActor, RuleContext
from ferryman.bridge.authz import XmppJidHandler
from ferryman.bridge.coap_mqtt import CoapMqttBridge, MqttCoapPort
from ferryman.bridge.http_mqtt import MqttPublisher
from ferryman.bridge.lease import ActiveStandbyBridge, Add, RedisLease
from ferryman.bridge.redis_store import RedisStore
from ferryman.bridge.smartgrid_handler import SmartgridHandler
from ferryman.bridge.store import Store, SubscriptionStore
from ferryman.bridge.xmpp_mqtt import (
    MQTT_MESSAGE,
    XMPP_CHAT,
    XMPP_COMMAND,
    XMPP_RULE_REPLAY,
    XMPP_SUBSCRIBE,
    CommandLimits,
    XmppMqttBridge,
)
from ferryman.config import PUBLISH_TARGET, ClusterSettings
from ferryman.protocols.coap.publish import PORT as COAP_PUBLISH_PORT
from ferryman.protocols.http.publish import PORT as HTTP_PUBLISH_PORT
from ferryman.protocols.mqtt.bridge_client import MqttBridgeClient
from ferryman.protocols.xmpp.session import XmppSession

__all__ = ["RULES", "LeasedMqttClient", "build_bridge", "redis_client", "rule_class"]

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
    if gateway.settings.cluster.enabled:
        if bridge.xmpp is not None:
            return _clustered(gateway)
        logger.info("[cluster] redis: no [bridge.xmpp] to run active/standby: the bridge stays local")
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
    assert gateway.chain is not None and bridge.xmpp is not None
    marks = {name: Store(_marks_path(bridge.xmpp.store, name)) for name in _rule_sets(gateway)}

    def add(part: Any) -> Any:
        parts.append(part)
        return part

    chain = gateway.chain.with_first([jids])
    _start_xmpp_bridge(gateway, xmpp, mqtt, chain, Store(bridge.xmpp.store), marks, add)
    return Built(parts, ports, handlers=[jids])


def _rule_sets(gateway: Gateway) -> list[str]:
    return ["smartgrid"] if gateway.settings.bridge.smartgrid is not None else []


def _start_xmpp_bridge(
    gateway: Gateway,
    xmpp: pykka.ActorRef[Any],
    mqtt: pykka.ActorRef[Any],
    chain: HandlerChain,
    store: SubscriptionStore,
    rule_marks: Mapping[str, SubscriptionStore],
    add: Add,
) -> pykka.ActorRef[Any]:
    """The XMPP bridge rule actor, its routes, and the rule sets of ``rule_marks``; each part to ``add``."""
    bridge = gateway.settings.bridge
    assert gateway.router is not None and bridge.xmpp is not None
    handler: pykka.ActorRef[Any] = add(
        XmppMqttBridge.start(
            xmpp=xmpp,
            mqtt=mqtt,
            store=store,
            chain=chain,
            settings=gateway.settings,
            router=gateway.router,
            rule_marks=rule_marks,
            limits=CommandLimits.from_settings(bridge.xmpp),
            metrics=gateway.metrics,
        )
    )
    router = gateway.router.proxy()
    for kind in (XMPP_CHAT, XMPP_COMMAND, XMPP_SUBSCRIBE, XMPP_RULE_REPLAY, MQTT_MESSAGE):
        router.register(kind, handler).get(timeout=5)
    context = RuleContext(gateway.settings, gateway.router, ports={"xmpp": xmpp, "mqtt": mqtt})
    for name in rule_marks:
        for part in rule_class(name).start_rule(context):
            add(part)
    return handler


# -- active/standby across replicas ([cluster] redis) ----------------------------------------------------
READY_TIMEOUT = 10.0  # seconds the XMPP bridge rule actor may take to restore its subscriptions


class LeasedMqttClient(MqttBridgeClient):
    """The bridge's MQTT session under the bridge lease: it connects when told (``connect``), once the parts
    that take its messages are in place, never by itself at start. /health names it ``MqttBridgeClient``."""

    health_name = "MqttBridgeClient"
    _told = False

    def on_start(self) -> None:
        """Nothing yet: ``connect`` starts the session."""

    def connect(self) -> None:
        if not self._told:
            self._told = True
            super().on_start()


class _SessionFirst:
    """The first of the active parts to stop: the bridge's MQTT session ends (a normal DISCONNECT: the
    broker keeps what comes next for the next active replica), then a round trip through the Router, so
    that what the session had routed is in the rule actors' inboxes before they are told to stop."""

    def __init__(self, mqtt: pykka.ActorRef[Any], router: pykka.ActorRef[Any]) -> None:
        self.mqtt, self.router = mqtt, router

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.mqtt.stop(timeout=timeout)
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            self.router.proxy().kinds().get(timeout=timeout)


class _ConnectWhenOnline:
    """Connects the bridge's MQTT session once the XMPP session is online: what the broker kept for the
    bridge while no replica was active stays with the broker (persistent, within the broker's own limits)
    until it can be passed on, rather than piling up in the XMPP session's bounded send queue. A greenlet,
    killed by ``stop`` (the lease lost meanwhile)."""

    POLL = 0.05  # seconds between two looks at the XMPP session
    WARN_AFTER = 10.0  # seconds of waiting before a warning

    def __init__(self, mqtt: pykka.ActorRef[Any], xmpp: pykka.ActorRef[Any]) -> None:
        self._greenlet = gevent.spawn(self._run, mqtt.proxy(), xmpp.proxy())

    def _run(self, mqtt: Any, xmpp: Any) -> None:
        warn_at = time.monotonic() + self.WARN_AFTER
        try:
            while not xmpp.is_connected().get(timeout=5):
                if time.monotonic() >= warn_at:
                    logger.warning("bridge: the MQTT session waits for the XMPP session to be online")
                    warn_at = float("inf")
                gevent.sleep(self.POLL)
            mqtt.connect().get(timeout=5)
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            logger.debug("bridge: the MQTT session was not connected: {!r}", exc)

    def stop(self, timeout: float = 5.0) -> None:
        self._greenlet.kill(block=True, timeout=timeout)


def redis_client(cluster: ClusterSettings) -> Any:
    """The ``redis.Redis`` client of ``[cluster]``: one attempt per call (the lease loop retries), socket
    timeouts of ``renew_interval``. GatewayError when the ``redis`` package is not installed."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise GatewayError(
            "[cluster] redis is set, but the Python package `redis` is not installed: "
            "pip install 'ferryman[cluster]'"
        ) from exc
    timeout = max(0.1, cluster.renew_interval)
    return redis.Redis.from_url(
        cluster.redis,
        username=cluster.username or None,
        password=cluster.password or None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _clustered(gateway: Gateway) -> Built:
    """The bridge with ``[cluster] redis``: the parts every replica runs, and an ``ActiveStandbyBridge``
    that runs the others while this replica holds the bridge lease (see the module docstring)."""
    settings = gateway.settings
    bridge, cluster = settings.bridge, settings.cluster
    assert bridge.mqtt is not None and bridge.xmpp is not None
    assert gateway.router is not None and gateway.chain is not None
    client = redis_client(cluster)
    prefix = f"{cluster.key_prefix}bridge:{bridge.mqtt.client_id}:"
    lease = RedisLease(client, prefix + "lease", cluster.lease_ttl)
    parts: list[Any] = []
    jids: pykka.ActorRef[Any] | None = None
    try:
        host_lease = gateway.asyncio.lease()  # the loop CoAP listeners share
        parts.append(host_lease)
        ports = _local_ports(gateway, parts)
        # XMPP users are asked through the Gateway's chain with the [bridge.xmpp] JID rules in front.
        jids = XmppJidHandler.start(settings=settings)
        chain = gateway.chain.with_first([jids])

        def activate(add: Add) -> None:
            _activate(gateway, host_lease.host, chain, client, prefix, lease, add)

        parts.append(
            ActiveStandbyBridge.start(
                lease, activate, renew_interval=cluster.renew_interval, stop_timeout=settings.shutdown_timeout
            )
        )
    except BaseException:
        for part in reversed([*parts, *([jids] if jids is not None else [])]):
            part.stop()  # not handed over yet: the Gateway does not know them
        raise
    return Built(parts, ports, handlers=[jids])


def _local_ports(gateway: Gateway, parts: list[Any]) -> dict[str, Any]:
    """For publish-mode http / coap listeners, this replica's own MQTT session (no session kept on the
    broker after it) and CoAP bridge, outside the lease: every replica serves its own devices."""
    settings = gateway.settings
    bridge = settings.bridge
    assert bridge.mqtt is not None
    if not any(listener.target == PUBLISH_TARGET for listener in settings.listeners):
        return {}
    coap_handle: list[Any] = []  # set below; nothing observes before the listeners start

    def sink(message: Any) -> None:
        if coap_handle:
            coap_handle[0].defer(message)

    mqtt = MqttBridgeClient.start(
        bridge.mqtt.url,
        # unguessable: a device cannot take it (only [bridge.mqtt] client_id itself is reserved)
        f"{bridge.mqtt.client_id}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}",
        sink,
        username=bridge.mqtt.username or None,
        password=bridge.mqtt.password or None,
        session_expiry=0,
    )
    parts.append(mqtt)
    coap = CoapMqttBridge.start(mqtt=mqtt, settings=settings, router=gateway.router)
    parts.append(coap)
    coap_handle.append(coap.proxy().handle)
    return {HTTP_PUBLISH_PORT: MqttPublisher(mqtt), COAP_PUBLISH_PORT: MqttCoapPort(mqtt, coap)}


def _activate(
    gateway: Gateway,
    host: Any,
    chain: HandlerChain,
    client: Any,
    prefix: str,
    lease: RedisLease,
    add: Add,
) -> None:
    """The active bridge, started on the replica that has just taken ``lease``: the XMPP session, the XMPP
    bridge with its subscriptions in Redis (writes fenced by the lease), the rule sets, and last the
    connection of the bridge's persistent MQTT session, once its messages have somewhere to go (the rule
    actors restored and registered, the XMPP session online)."""
    bridge = gateway.settings.bridge
    assert bridge.mqtt is not None and bridge.xmpp is not None and gateway.router is not None
    assert lease.token is not None
    guard = (lease.key, lease.token)
    store = RedisStore(client, prefix + "subscriptions", guard=guard)
    marks: dict[str, SubscriptionStore] = {
        name: RedisStore(client, f"{prefix}marks:{name}", guard=guard) for name in _rule_sets(gateway)
    }
    route = gateway.router.proxy().route
    mqtt: pykka.ActorRef[Any] = add(
        LeasedMqttClient.start(
            bridge.mqtt.url,
            bridge.mqtt.client_id,
            lambda message: route.defer(message),
            username=bridge.mqtt.username or None,
            password=bridge.mqtt.password or None,
        )
    )
    xmpp = add(XmppSession.start(bridge.xmpp, host, gateway.router, ca_file=bridge.xmpp.ca_file or None))
    handler = _start_xmpp_bridge(gateway, xmpp, mqtt, chain, store, marks, add)
    handler.proxy().name.get(timeout=READY_TIMEOUT)  # answered after its on_start: subscriptions restored
    add(_SessionFirst(mqtt, gateway.router))
    add(_ConnectWhenOnline(mqtt, xmpp))


def _marks_path(store: str, rule: str) -> str:
    """Where a rule set's marks (which subscriptions it made) persist: a SQLite file next to the store."""
    if store == ":memory:" or store.startswith("file:"):
        return ":memory:"
    return f"{store}.{rule}"
