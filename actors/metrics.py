"""Metrics (prometheus-client, one registry per Gateway) and the /metrics + /health HTTP endpoint.

The data plane never touches a Prometheus counter per packet: sessions count into plain integers and add
them to the counters once per chunk read (see ``PacketCounters``).

With worker processes (``ferryman run --workers N``) each worker's values live in prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor for its workers) and the supervisor
serves their sum; every gauge says how it is summed (``multiprocess_mode``: ``livesum``, the workers alive).
The gauges computed at scrape time (actors, greenlets, CoAP observations) cannot be read across processes:
a worker writes them every few seconds (``sample_process_gauges``). In one process none of this applies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import pykka
from gevent.pywsgi import WSGIServer
from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["PACKET_TYPE_NAMES", "Metrics", "MetricsServer", "PacketCounters", "Renders"]

PACKET_TYPE_NAMES = (
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections_open = Gauge(
            "ferryman_connections_open",
            "Device connections open now",
            ["listener"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_total = Counter(
            "ferryman_connections", "Device connections accepted", ["listener"], registry=r
        )
        self.packets = Counter(
            "ferryman_packets", "Packets by type and direction", ["listener", "direction", "type"], registry=r
        )
        self.bytes = Counter("ferryman_bytes", "Bytes by direction", ["listener", "direction"], registry=r)
        self.refusals = Counter("ferryman_refusals", "Refusals by reason", ["listener", "reason"], registry=r)
        self.errors = Counter(
            "ferryman_session_errors",
            "Sessions closed on a protocol error",
            ["listener", "error"],
            registry=r,
        )
        self.actors = Gauge(
            "ferryman_actors",
            "Pykka actors alive (registered ones and session actors)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.actors.set_function(_count_actors)
        self.greenlets = Gauge(
            "ferryman_greenlets", "Greenlets alive", registry=r, multiprocess_mode="livesum"
        )
        self.greenlets.set_function(_count_greenlets)
        self.coap_observations = Gauge(
            "ferryman_coap_observations",
            "CoAP observations open now",
            ["listener"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.bridge_subscriptions = Gauge(
            "ferryman_bridge_subscriptions",
            "XMPP bridge subscriptions held (JID, filter)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.bridge_commands_refused = Counter(
            "ferryman_bridge_commands_refused",
            "XMPP bridge commands refused by a limit (rate, per-JID or total subscriptions) or not allowed",
            ["reason"],
            registry=r,
        )
        self._children: dict[tuple[str, str], tuple[list[Any], Any]] = {}

    def children(self, listener: str, direction: str) -> tuple[list[Any], Any]:
        """The packet counters by type and the byte counter of one listener and direction, memoized: a new
        connection takes two lookups instead of 17 ``labels()`` calls per direction."""
        key = (listener, direction)
        found = self._children.get(key)
        if found is None:
            packets = [self.packets.labels(listener, direction, name) for name in PACKET_TYPE_NAMES]
            found = self._children[key] = (packets, self.bytes.labels(listener, direction))
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sample_process_gauges(self) -> None:
        """Write what every gauge reads now as its value: the ones read at scrape time (``set_function``:
        actors, greenlets, CoAP observations and proxy state) are not in a worker's multiprocess file
        otherwise. A worker process calls this every few seconds, so that the supervisor's sum over the
        workers' files has them; for the other gauges it writes the value they hold (no yield between)."""
        for gauge in [value for value in vars(self).values() if isinstance(value, Gauge)]:
            for family in gauge.collect():
                for sample in family.samples:
                    (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)


class Renders(Protocol):
    """What ``MetricsServer`` serves at /metrics: a worker's ``Metrics``, or the supervisor's sum."""

    def render(self) -> bytes: ...


def _count_actors() -> int:
    from .session import SessionActor

    return len(pykka.ActorRegistry.get_all()) + SessionActor.live


def _count_greenlets() -> int:
    import gc

    from greenlet import greenlet

    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet) and not o.dead)


class PacketCounters:
    """Per-connection, per-direction packet counts, flushed into the shared counters once per chunk."""

    __slots__ = ("_bytes", "_children", "counts")

    def __init__(self, metrics: Metrics, listener: str, direction: str) -> None:
        self.counts = [0] * 16
        self._children, self._bytes = metrics.children(listener, direction)

    def flush(self, nbytes: int) -> None:
        counts = self.counts
        for i in range(16):
            n = counts[i]
            if n:
                self._children[i].inc(n)
                counts[i] = 0
        if nbytes:
            self._bytes.inc(nbytes)


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text format) and ``/health`` (JSON) on one address. /health answers
    200 when its ``status`` is ``ok`` (or ``degraded``: a supervisor with some of its workers serving), 503
    otherwise."""

    def __init__(
        self, address: tuple[str, int], metrics: Renders, health: Callable[[], dict[str, Any]]
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.server = WSGIServer(address, self._app, log=None, error_log=None)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address  # type: ignore[no-any-return]

    def start(self) -> None:
        self.server.start()
        logger.info("metrics and health on http://{}:{}/metrics", *self.server.address[:2])

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = self.metrics.render()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/health":
            state = self.health()
            ok = state.get("status") in ("ok", "degraded")
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")]
            )
            return [json.dumps(state).encode()]
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": "not found"}']
