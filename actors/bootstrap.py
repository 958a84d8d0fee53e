"""gevent bootstrap: monkey-patching must come before ssl, asyncio, pykka, loguru or paho are imported.

Every entry point (the CLI, the tests' conftest, the benchmarks) starts with::

    from gevent import monkey; monkey.patch_all()

gevent gives no warning when that order is broken (pykka would then create real locks at import time and
actors would block the hub). ``verify()`` detects the breakage after the fact, and the Gateway refuses to
start on a broken runtime.
"""

from __future__ import annotations

import sys

__all__ = ["ORDER_SENSITIVE", "verify"]

#: Modules that capture threading/socket/ssl primitives at import time.
ORDER_SENSITIVE = ("ssl", "asyncio", "pykka", "loguru", "paho.mqtt.client")


def verify() -> list[str]:
    """Problems with the gevent runtime of this process; empty when patching happened first."""
    problems: list[str] = []
    from gevent import monkey

    for mod in ("socket", "ssl", "threading", "select", "time", "queue"):
        if not monkey.is_module_patched(mod):
            problems.append(f"{mod} is not monkey-patched: call gevent.monkey.patch_all() first")
    if "pykka" in sys.modules:
        import pykka

        # Patched, threading.RLock is the pure-Python _RLock around a gevent lock; imported before the
        # patch, pykka holds the C _thread.RLock, which blocks the whole hub when contended.
        block = getattr(pykka.ActorRegistry._actor_refs_lock, "_block", None)
        if not type(block).__module__.startswith("gevent"):
            problems.append(
                "pykka was imported before gevent.monkey.patch_all(): its registry lock is a real lock"
            )
    return problems
