"""ferryman.protocols.http: the ``http`` listener, an authenticating reverse proxy in front of an HTTP target,
or (``target = "mqtt"``) POST -> MQTT publish through the bridge. See docs/http.md."""

from .listener import HttpListener

__all__ = ["HttpListener"]
