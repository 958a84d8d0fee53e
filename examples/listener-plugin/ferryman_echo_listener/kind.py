"""The settings of an ``echo`` listener: the keys it owns and its cross-key checks."""

from __future__ import annotations

from ferryman.config import Kind, KindIssue, ListenerKey, ListenerKind, ListenerSettings

__all__ = ["KIND"]


def validate(settings: ListenerSettings) -> list[KindIssue]:
    """Cross-key checks, run by the loader once every key is valid on its own."""
    problems: list[KindIssue] = []
    greeting: str = settings.options["greeting"]
    max_line: int = settings.options["max_line"]
    if len(greeting.encode()) > max_line:
        problems.append(("greeting", f"is longer than max_line ({max_line} bytes)"))
    if "\n" in greeting or "\r" in greeting:
        problems.append(("greeting", "must be one line"))
    token: str = settings.options["token"]
    if token and len(token.encode()) > max_line:
        problems.append("token: longer than max_line: no client could send it")
    return problems


KIND = ListenerKind(
    protocol="echo",
    doc="a line-based TCP echo service (an example plug-in)",
    target_schemes=(),  # an echo listener forwards nowhere: it takes no `target`
    shared_keys=frozenset({"max_connections"}),
    keys=(
        ListenerKey("greeting", Kind.STR, "hello", "the line sent to a client when it connects"),
        ListenerKey("max_line", Kind.INT, 1024, "longest line accepted, in bytes", minimum=1, maximum=65536),
        ListenerKey("token", Kind.STR, "", "a client's first line must be this (empty: none)", secret=True),
    ),
    validate=validate,
)
