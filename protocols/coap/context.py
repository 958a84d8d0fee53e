"""What one ``coap`` listener's resources share: its settings, the handler chain, metrics, the asyncio host
it runs on and the authentication cache. Built by the listener (a greenlet), then used from the asyncio
thread by the resources of publish mode and of proxy mode alike."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from ferryman.actors.asyncio_host import AsyncioHost
from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics

from .auth import AuthCache
from .codec import FastPath
from .observers import ObserverBook

__all__ = ["CoapContext"]


@dataclass(eq=False)
class CoapContext:
    """Per-listener state. ``auth`` is touched only from the asyncio thread."""

    settings: Any  # config.schema.ListenerSettings
    chain: HandlerChain
    metrics: Metrics
    host: AsyncioHost
    auth: AuthCache = field(init=False, repr=False)
    #: True on a ``coaps`` (DTLS) listener.
    secure: bool = False
    #: Set by the listener when it stops: new requests get 5.03.
    stopping: bool = False
    #: Datagrams dropped because aiocoap could not decode them (asyncio thread).
    garbage: int = 0
    #: The site's fast path (codec.FastPath): datagrams it takes never reach aiocoap.
    fast_path: FastPath | None = None
    #: Datagrams refused by ``codec.screen`` (format errors, bad critical options; asyncio thread).
    rejected: int = 0
    #: The observations of this listener, bounded per peer and in total (observers.py).
    observers: ObserverBook = field(init=False, repr=False)
    _mid: int = field(default_factory=lambda: int.from_bytes(os.urandom(2), "big"), repr=False)

    def __post_init__(self) -> None:
        self.auth = AuthCache(self)
        self.observers = ObserverBook(self)

    def next_mid(self) -> int:
        """A message id for a NON answer made outside aiocoap (asyncio thread)."""
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    @property
    def name(self) -> str:
        return str(self.settings.name)

    @property
    def timeout(self) -> float:
        return float(self.settings.connect_timeout)

    def log(self, level: str, message: str, *args: Any) -> None:
        """Logs from the asyncio thread: loguru's sink lock is gevent's after monkey-patching, so the
        record is written in the hub (a greenlet holding that lock would block this thread's acquire)."""
        self.host.to_hub(_log, level, message, args)

    def count_refusal(self, what: str) -> None:
        """``ferryman_refusals_total{listener, what}`` (what: connect | publish | subscribe). Counted in the
        hub: prometheus-client's locks are gevent's after monkey-patching."""
        self.host.to_hub(_inc, self.metrics.refusals.labels(self.name, what))


def _log(level: str, message: str, args: tuple[Any, ...]) -> None:
    logger.opt(depth=0).log(level, message, *args)


def _inc(counter: Any) -> None:
    counter.inc()
