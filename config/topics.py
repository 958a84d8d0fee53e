"""The syntax of an MQTT topic filter (MQTT 4.7), defined in the lowest layer so that the settings
(ACL filters in ``[[auth.users]]``) and everything above (grants, the codec, the bridge) apply one rule.
``ferryman.actors.topics`` re-exports it beside the matching functions."""

from __future__ import annotations

__all__ = ["filter_error"]


def filter_error(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid subscription filter, or None."""
    if not topic_filter:
        return "empty topic filter"
    if "\x00" in topic_filter:
        return "topic filter contains U+0000"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None
