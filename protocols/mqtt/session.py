"""The two actors of one proxied MQTT connection.

``MqttClientSession`` is the device side: it receives control-plane messages (a new grant, a disconnect
order) and applies them to the connection. ``MqttUpstreamSession`` dials the target and runs the downlink
pump in its own greenlet. The uplink pump runs in the listener's handler greenlet for the connection.
"""

from __future__ import annotations

import gevent
from loguru import logger

from ferryman.actors.contracts import Grant, Refusal
from ferryman.actors.session import ClientSessionActor, UpstreamSessionActor

from .proxy import MqttConnection, Stream

__all__ = ["MqttClientSession", "MqttUpstreamSession"]


class MqttClientSession(ClientSessionActor):
    def __init__(self, conn: MqttConnection) -> None:
        super().__init__()
        self.conn = conn

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
        if self.conn.grant.interceptors != grant.interceptors and self.conn.version == 5:
            # Interceptors change topics; aliases learned under the old ones must be re-sent in full.
            self.conn._unlearned_up.update(self.conn._alias_up)
            self.conn._unlearned_down.update(self.conn._alias_down)
        self.conn.set_grant(grant)
        logger.info("new grant for {!r}: {!r}", self.conn.session, grant)

    def disconnect(self, refusal: Refusal) -> None:
        logger.info("disconnecting {!r}: {}", self.conn.session, refusal.reason or refusal.code.value)
        self.conn.kick_refusal(refusal)
        self.close(refusal.reason or refusal.code.value)

    def on_close(self, reason: str) -> None:
        self.conn.close(reason)


class MqttUpstreamSession(UpstreamSessionActor):
    CALLS = UpstreamSessionActor.CALLS | {"dial", "start_downlink"}

    def __init__(self, conn: MqttConnection) -> None:
        super().__init__()
        self.conn = conn
        self._pump: gevent.Greenlet | None = None

    def dial(self, timeout: float) -> Stream:
        """The listener's dialer: a TCP or TLS socket (with the listener's client context, made once), or a
        WebSocket client stream, to its target."""
        return self.conn.ctx.dial(timeout)

    def start_downlink(self) -> None:
        self._pump = gevent.spawn(self.conn.downlink)

    def on_close(self, reason: str) -> None:
        self.conn.close(reason)
