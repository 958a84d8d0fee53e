"""ferryman: an IoT protocol gateway on a Pykka/gevent actor runtime.

The public API is re-exported lazily: importing ``ferryman`` (or any ``ferryman.*`` module) must not import
pykka, ssl or asyncio before the entry point has run ``gevent.monkey.patch_all()``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Gateway": "ferryman.actors.gateway",
    "GatewayError": "ferryman.actors.gateway",
    "HandlerActor": "ferryman.actors.handler",
    "HandlerChain": "ferryman.actors.handler",
    "Router": "ferryman.actors.router",
    "Session": "ferryman.actors.contracts",
    "SessionControl": "ferryman.actors.contracts",
    "Grant": "ferryman.actors.contracts",
    "CombinedGrant": "ferryman.actors.contracts",
    "Refusal": "ferryman.actors.contracts",
    "RefusalCode": "ferryman.actors.contracts",
    "Direction": "ferryman.actors.contracts",
    "Interceptor": "ferryman.actors.contracts",
    "Message": "ferryman.actors.contracts",
    "TopicMatcher": "ferryman.actors.topics",
    "Settings": "ferryman.config",
    "load_settings": "ferryman.wiring",
    "default_settings": "ferryman.wiring",
    "build_gateway": "ferryman.wiring",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ferryman' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
