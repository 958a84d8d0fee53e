"""The "smartgrid" rule set: the chat commands and renderings of the Go xmpp-mqtt-gateway (Quobis, SCRATCH).

Contract: docs/smartgrid.md. Commands (words separated by any whitespace; the keywords ``GET``,
``devices``, ``values`` and ``from`` are matched case-insensitively, device and variable names exactly):

    GET devices           -> <root>listOfDevices
    GET values <dev>      -> <root><dev>
    GET <var> from <dev>  -> <root><dev>/<var>

``<dev>`` and ``<var>`` must be one non-empty topic level (no ``/``, ``+``, ``#``, U+0000); anything else is a
``Usage``. Payloads are JSON; ``render`` returns None for a topic outside the root, a payload that is not
JSON, or JSON of the wrong shape for its topic (the caller logs it and sends nothing). Values are shown as the
Go original printed them: strings bare, everything else as JSON text (``1111``, ``true``, ``null``).
``SmartgridRules`` keeps the last rendered body per topic so a GET can be answered at once.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ferryman.actors.topics import filter_error, topic_name_error

__all__ = ["DEFAULT_ROOT", "Query", "SmartgridRules", "Usage", "render_value"]

DEFAULT_ROOT = "smartgrid/"
DEVICES = "listOfDevices"

USAGE = (
    "usage:\n"
    "  GET devices           the list of devices\n"
    "  GET values <dev>      every value of device <dev>\n"
    "  GET <var> from <dev>  variable <var> of device <dev>"
)


@dataclass(frozen=True, slots=True)
class Query:
    """A valid GET: subscribe ``topic`` (QoS 1) and answer from the cache."""

    topic: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Not a smartgrid command; ``text`` is the reply."""

    reason: str

    @property
    def text(self) -> str:
        return f"{self.reason}\n{USAGE}"


def _level_error(name: str) -> str | None:
    if not name or "/" in name or "+" in name or "#" in name or "\x00" in name:
        return f"{name!r} is not a valid device or variable name"
    return None


def render_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class SmartgridRules:
    """Parsing, rendering and the last-value cache, for one root. Owned by one actor; not thread-safe."""

    def __init__(self, root: str = DEFAULT_ROOT, *, max_cached: int = 10_000) -> None:
        if not root.endswith("/"):
            root += "/"
        err = topic_name_error(root) or filter_error(root + "#")
        if err or root == "/":
            raise ValueError(f"invalid smartgrid root {root!r}: {err or 'empty'}")
        self.root = root
        self.max_cached = max_cached
        self._cache: OrderedDict[str, str] = OrderedDict()

    # -- commands ----------------------------------------------------------------------------------------

    def parse(self, text: str) -> Query | Usage:
        words = text.split()
        if not words or words[0].lower() != "get":
            return Usage("not a GET command")
        if len(words) == 2 and words[1].lower() == "devices":
            return Query(self.root + DEVICES)
        if len(words) == 3 and words[1].lower() == "values":
            err = _level_error(words[2])
            return Usage(err) if err else Query(self.root + words[2])
        if len(words) == 4 and words[2].lower() == "from":
            err = _level_error(words[1]) or _level_error(words[3])
            return Usage(err) if err else Query(f"{self.root}{words[3]}/{words[1]}")
        return Usage(f"cannot understand {text.strip()!r}")

    def usage_text(self) -> str:
        return USAGE

    # -- rendering ---------------------------------------------------------------------------------------

    def is_mine(self, topic: str) -> bool:
        return topic.startswith(self.root)

    def render(self, topic: str, payload: bytes) -> str | None:
        """The chat body for a message, or None (outside the root, not JSON, or the wrong shape)."""
        if not self.is_mine(topic):
            return None
        levels = topic[len(self.root) :].split("/")
        if not all(levels) or len(levels) > 2:
            return None
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if levels == [DEVICES]:
            if not isinstance(data, list):
                return None
            return "\nDevices: \n" + "".join(f"\t{render_value(d)}\n" for d in data)
        if len(levels) == 2:
            dev, var = levels
            if not isinstance(data, dict) or var not in data:
                return None
            return f"\nDevice: {dev}\n\t{var}: {render_value(data[var])}"
        dev = levels[0]
        if not isinstance(data, list) or not all(isinstance(o, dict) for o in data):
            return None
        lines = "".join(f"\t{k} : {render_value(v)}\n" for o in data for k, v in o.items())
        return f"\n{dev}:\n{lines}"

    # -- last-value cache --------------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> str | None:
        """Render and remember; the body to send to every JID that asked for ``topic``, or None (log it)."""
        body = self.render(topic, payload)
        if body is not None:
            self._cache[topic] = body
            self._cache.move_to_end(topic)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return body

    def answer_now(self, topic: str) -> str | None:
        """The last body for ``topic``, or None: then the answer comes with the next message."""
        return self._cache.get(topic)

    def forget(self, topic: str) -> None:
        self._cache.pop(topic, None)
