"""Publish mode (``target = "mqtt"``): the contract between the http listener and the bridge.

The listener never imports the bridge. The bridge (``ferryman/bridge_wiring.py``) offers a :class:`Publisher`
over its MQTT session (``bridge/http_mqtt.py``) under the kind :data:`PORT`; the Gateway hands it to the
listener's constructor (``ListenerServices``, ``actors/services.py``). Each POST is one call of
``Publisher.publish`` (a future on the bridge's MQTT session) and a wait on the acknowledgement, in the
request's own greenlet: no Router hop per request (bench/http_publish.py measured why).

The grant's interceptors run on every publish, after the grant's checks (``intercept``): they see the
request as an MQTT ``Publish`` going up, and what they return is published; one that drops it gets the
normal success answer (the interceptor consumed it), as a dropped MQTT PUBLISH gets its PUBACK.
"""

from __future__ import annotations

from typing import Protocol

from ferryman.actors.contracts import Direction, Grant, Session
from ferryman.actors.intercept import run_interceptors
from ferryman.protocols.mqtt.packets import Publish

__all__ = [
    "PORT",
    "QOS_HEADER",
    "RETAIN_HEADER",
    "Acknowledgement",
    "Publisher",
    "intercept",
    "parse_qos",
    "parse_retain",
]

#: The kind under which the bridge offers its :class:`Publisher` (``ListenerServices.ports``).
PORT = "http.publish"

#: Request headers of publish mode, in WSGI environ form.
QOS_HEADER = "HTTP_X_MQTT_QOS"
RETAIN_HEADER = "HTTP_X_MQTT_RETAIN"

_RETAIN = {"0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


class Acknowledgement(Protocol):
    """The outcome of one publish (``protocols.mqtt.bridge_client.Delivery`` is one)."""

    reason: str

    def wait(self, timeout: float | None = None) -> bool:
        """True once the bridge's MQTT session has taken the message (QoS 1/2: the broker acknowledged it);
        False on a refusal, a failure, or when ``timeout`` passes first."""
        ...


class Publisher(Protocol):
    """What the bridge hands a publish-mode listener."""

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Acknowledgement: ...


def parse_qos(value: str | None, default: int) -> int | None:
    """The QoS of ``X-MQTT-QoS`` (``default`` without the header); None when it is not 0, 1 or 2."""
    if value is None:
        return default
    value = value.strip()
    return int(value) if value in ("0", "1", "2") else None


def parse_retain(value: str | None) -> bool | None:
    """``X-MQTT-Retain``: 1/true/yes or 0/false/no (case-insensitive); False without it, None when bad."""
    if value is None:
        return False
    return _RETAIN.get(value.strip().lower())


def intercept(
    grant: Grant, session: Session, topic: str, payload: bytes, qos: int, retain: bool
) -> tuple[str, bytes, int, bool] | None:
    """(topic, payload, qos, retain) to publish after the grant's interceptors (``actors/intercept.py``),
    which see an MQTT ``Publish`` going up; None when one of them dropped it. Without interceptors the
    request as it came."""
    if not grant.interceptors:
        return topic, payload, qos, retain
    packet = Publish(topic, payload, qos, retain, packet_id=1 if qos else None)
    out = run_interceptors(grant, session, packet, Direction.UP)
    if out is None:
        return None
    if not isinstance(out, Publish):
        raise TypeError(f"an interceptor turned an HTTP publish into {type(out).__name__}, not a Publish")
    return out.topic, bytes(out.payload), out.qos, out.retain
