"""MQTT message -> chat body for the bridge: ``<topic>: <payload>``.

A payload that is UTF-8 *and* holds only characters XML 1.0 can carry (an XMPP stanza cannot hold most C0
controls, U+FFFE or U+FFFF) is sent as text. Anything else is sent as ``<topic>: base64:<standard base64>``.
The marker is ambiguous only with a text payload that itself starts with ``base64:``; readers who need to
tell them apart should publish text that does not.
"""

from __future__ import annotations

import base64
import re

__all__ = ["BASE64_MARKER", "payload_text", "render_message"]

BASE64_MARKER = "base64:"

# Characters outside XML 1.0's Char production (surrogates cannot appear in a str decoded from UTF-8).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def payload_text(payload: bytes) -> str:
    """The payload as chat text: itself when it is XML-safe UTF-8, else ``base64:<...>``."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or _NOT_XML.search(text):
        return BASE64_MARKER + base64.b64encode(payload).decode("ascii")
    return text


def render_message(topic: str, payload: bytes) -> str:
    return f"{topic}: {payload_text(payload)}"
