"""Chat commands of the XMPP<->MQTT bridge: parse one message, build the reply texts.

The contract (docs/architecture.md, "The bridge"): ``subscribe <filter>``, ``unsubscribe <filter>``,
``publish <topic> <payload…>``, ``list``, ``help``; verbs are case-insensitive and words are separated by any
run of whitespace. Anything else parses to ``Help`` carrying the reason, so the reply tells the user what was
wrong before the usage text.

Decisions:

- A filter or topic is one whitespace-free word; a second word after a filter is an error (not part of the
  filter), so ``subscribe a b`` is refused rather than silently subscribing ``a b``.
- ``publish``'s payload is everything after the topic and the whitespace run that follows it, verbatim
  (inner spaces and newlines kept); the message's leading and trailing whitespace is dropped first. The
  payload may be empty (``publish a/b`` publishes zero bytes): an empty message is a valid MQTT message.
- Shared-subscription filters (``$share/...``) are refused: the bridge holds one broker subscription per
  filter and fans out itself, a shared group would make deliveries disappear.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ferryman.actors.topics import validate_topic_filter, validate_topic_name

__all__ = [
    "Command",
    "Help",
    "List",
    "Publish",
    "Subscribe",
    "Unsubscribe",
    "parse_command",
    "reply_error",
    "reply_help",
    "reply_list",
    "reply_published",
    "reply_subscribed",
    "reply_unsubscribed",
    "usage_text",
    "validate_filter",
    "validate_topic",
]


@dataclass(frozen=True, slots=True)
class Subscribe:
    filter: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    filter: str


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: str

    @property
    def payload_bytes(self) -> bytes:
        return self.payload.encode("utf-8")


@dataclass(frozen=True, slots=True)
class List:
    pass


@dataclass(frozen=True, slots=True)
class Help:
    """``help`` itself (reason None) or a message that is not a valid command (reason says why)."""

    reason: str | None = None


Command = Subscribe | Unsubscribe | Publish | List | Help

_USAGE = (
    "commands:\n"
    "  subscribe <filter>          receive MQTT messages matching <filter> (+ and # wildcards)\n"
    "  unsubscribe <filter>        stop receiving them\n"
    "  publish <topic> <payload>   publish <payload> (the rest of the message) to <topic>\n"
    "  list                        your subscriptions\n"
    "  help                        this text"
)


def usage_text() -> str:
    return _USAGE


def validate_filter(topic_filter: str) -> str | None:
    """Why ``topic_filter`` may not be subscribed through the bridge, or None (the broker's rules:
    ``validate_topic_filter``, the one check the bridge's MQTT session applies too)."""
    err = validate_topic_filter(topic_filter)
    if err:
        return f"invalid filter {topic_filter!r}: {err}"
    if topic_filter.startswith("$share/"):
        return f"invalid filter {topic_filter!r}: shared subscriptions are not supported"
    return None


def validate_topic(topic: str) -> str | None:
    """Why ``topic`` may not be published to through the bridge, or None (``validate_topic_name``: the
    rules of a device's PUBLISH plus no control characters, which would make the broker drop the link)."""
    err = validate_topic_name(topic)
    if err:
        return f"invalid topic {topic!r}: {err}"
    return None


def _one_filter(verb: str, rest: str) -> str | Help:
    words = rest.split()
    if not words:
        return Help(f"{verb} needs a filter")
    if len(words) > 1:
        return Help(f"{verb} takes one filter (no spaces), got {len(words)} words")
    err = validate_filter(words[0])
    return Help(err) if err else words[0]


def parse_command(text: str) -> Command:
    """One chat message body to a command; never raises."""
    parts = text.strip().split(None, 1)
    if not parts:
        return Help("empty message")
    verb = parts[0].lower()
    rest = parts[1] if len(parts) > 1 else ""
    if verb in ("subscribe", "unsubscribe"):
        f = _one_filter(verb, rest)
        if isinstance(f, Help):
            return f
        return Subscribe(f) if verb == "subscribe" else Unsubscribe(f)
    if verb == "publish":
        tp = rest.split(None, 1)
        if not tp:
            return Help("publish needs a topic")
        err = validate_topic(tp[0])
        if err:
            return Help(err)
        return Publish(tp[0], tp[1] if len(tp) > 1 else "")
    if verb == "list":
        return List() if not rest else Help("list takes no arguments")
    if verb == "help":
        return Help()
    return Help(f"unknown command {parts[0]!r}")


def reply_subscribed(topic_filter: str) -> str:
    return f"subscribed {topic_filter}"


def reply_unsubscribed(topic_filter: str) -> str:
    return f"unsubscribed {topic_filter}"


def reply_published(topic: str) -> str:
    return f"published {topic}"


def reply_list(filters: Iterable[str]) -> str:
    """The JID's filters, sorted, one a line, or ``no subscriptions``."""
    fs = sorted(filters)
    return "\n".join(fs) if fs else "no subscriptions"


def reply_error(reason: str) -> str:
    return f"error: {reason}"


def reply_help(command: Help | None = None) -> str:
    """The usage text, preceded by ``error: <reason>`` when the message was not a valid command."""
    if command is not None and command.reason:
        return f"{reply_error(command.reason)}\n{_USAGE}"
    return _USAGE
