"""ferryman.protocols.websocket: MQTT over WebSocket (the ``mqtt-ws`` listener and ``ws://`` / ``wss://``
upstreams) with a fast RFC 6455 frame codec for the data plane."""

from .dialer import dial_websocket
from .listener import SUBPROTOCOLS, MqttWsListener, choose_subprotocol
from .stream import WebSocketError, WebSocketStream

__all__ = [
    "SUBPROTOCOLS",
    "MqttWsListener",
    "WebSocketError",
    "WebSocketStream",
    "choose_subprotocol",
    "dial_websocket",
]
