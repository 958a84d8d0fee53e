"""The ``coap`` listener: CoAP (aiocoap, on the process's shared asyncio loop) in front of a CoAP server
(proxy mode, ``target = "coap://..."``) or turned into MQTT publishes and subscriptions of the bridge
(``target = "mqtt"``). See docs/coap.md."""

from .listener import CoapListener

__all__ = ["CoapListener"]
