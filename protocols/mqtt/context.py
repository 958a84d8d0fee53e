"""What one MQTT listener's connections share, and the stream shape the pumps read and write.

Below ``connection`` (which uses the context) and ``listener`` (which makes it), so neither imports the other
for these types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics

__all__ = ["Dialer", "ListenerContext", "Parkable", "Stream"]


class Stream(Protocol):
    """What the pumps need of either side: a socket, or an adapter carrying the bytes in another framing
    (MQTT over WebSocket). ``recv`` returns b"" at the end and raises OSError (TimeoutError after
    ``settimeout``) like a socket; ``shutdown`` ends the other pump's blocking ``recv``."""

    def recv(self, bufsize: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> None: ...
    def settimeout(self, value: float | None, /) -> None: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class Parkable(Protocol):
    """A stream a parked pump can wait on without a greenlet (parking.py): a socket (TLS included), whose
    readiness is its descriptor's. A WebSocket adapter is not one: it may hold bytes of a frame read."""

    def fileno(self) -> int: ...
    def gettimeout(self) -> float | None: ...


#: Opens the upstream within a timeout (seconds); raises OSError when it cannot.
Dialer = Callable[[float], Stream]


@dataclass
class ListenerContext:
    """What every connection of one listener shares."""

    name: str
    settings: Any  # ferryman.config.ListenerSettings
    chain: HandlerChain
    metrics: Metrics
    target_host: str
    target_port: int
    dial: Dialer
    protocol: str = "mqtt"  # Session.protocol

    @property
    def target_label(self) -> str:
        return f"{self.target_host}:{self.target_port}"
