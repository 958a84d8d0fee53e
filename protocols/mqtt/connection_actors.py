"""The two actors of one proxied MQTT connection (control plane; the bytes never pass through them).

``MqttDeviceActor`` is the device side: it receives control-plane messages (a new grant, a disconnect
order) and applies them to the connection. ``MqttUpstreamActor`` owns the broker side once the target has
been dialed (in the connection's greenlet, which also reads and decides the CONNECT): it starts the
downlink pump in a greenlet of its own. The uplink pump runs in the listener's handler greenlet for the
connection. Both act on the connection (connection.py) through its public methods only, and both end with
it: each registers ``connection_ended`` in the connection's close callbacks, so the connection's close
stops them, in place when they are idle (actors/session.py).
"""

from __future__ import annotations

import gevent
from loguru import logger

from ferryman.actors.contracts import Grant, Refusal
from ferryman.actors.session import DeviceActorBase, UpstreamActorBase

from .connection import ProxiedConnection

__all__ = ["MqttDeviceActor", "MqttUpstreamActor"]


class MqttDeviceActor(DeviceActorBase):
    """The device side of one proxied connection: applies grants and disconnect orders to it."""

    def __init__(self, conn: ProxiedConnection) -> None:
        super().__init__()
        self.conn = conn
        conn.on_close.append(self.connection_ended)

    def update_grant(self, grant: Grant) -> None:
        """Policy changed: PUBLISH, SUBSCRIBE and deliveries from now on are judged by the new grant.

        With one handler the pushed grant is the session's grant. With a chain, one handler's grant is only
        a part of the combined one, so the session asks the whole chain again (this runs in the session
        actor, after the handler's ``tell``: no handler is waiting on it).
        """
        conn = self.conn
        if len(conn.ctx.chain.refs) > 1 and conn.session is not None:
            decision = conn.ctx.chain.connect(conn.session)
            if isinstance(decision, Refusal):
                self.disconnect(decision)
                return
            grant = decision
        conn.set_grant(grant)
        logger.info("new grant for {!r}: {!r}", conn.session, grant)

    def disconnect(self, refusal: Refusal) -> None:
        logger.info("disconnecting {!r}: {}", self.conn.session, refusal.reason or refusal.code.value)
        self.conn.kick_refusal(refusal)
        self.close(refusal.reason or refusal.code.value)

    def on_close(self, reason: str) -> None:
        self.conn.close(reason)


class MqttUpstreamActor(UpstreamActorBase):
    """The broker side of one proxied connection, started once the connection's upstream socket is
    connected and the CONNECT sent: runs the downlink pump (broker -> device) in its own greenlet."""

    def __init__(self, conn: ProxiedConnection) -> None:
        super().__init__()
        self.conn = conn
        conn.on_close.append(self.connection_ended)

    def on_start(self) -> None:
        # Not kept: the pump ends its greenlet when it parks and resumes in a new one (parking.py).
        gevent.spawn(self.conn.downlink)

    def on_close(self, reason: str) -> None:
        self.conn.close(reason)
