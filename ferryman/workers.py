"""Worker processes: ``ferryman run --workers N`` (``[run] workers = N | "auto"``).

One **supervisor** process starts N **workers**, each a fresh interpreter (``python -m ferryman run
--worker-index I ...``: gevent's monkey-patching and ``fork`` do not mix), each a whole Gateway:

- **Sockets.** Every worker opens its own listening socket per listener with ``SO_REUSEPORT``
  (``protocols/sockets.py``); the kernel spreads new connections over the group (UDP: each peer, by its
  address, to one socket). The supervisor holds a bound, never-listening ``SO_REUSEPORT`` socket per TCP
  address (``reserve_tcp_port``): the port stays the gateway's while a worker restarts, and an address in
  use by another program is reported once, before any worker starts. (Port 0, "any free port", which
  would give each worker another port, is refused by the settings: ports are 1..65535.)
- **Placement.** A listener class that says so (classmethod ``in_every_worker(settings)``: mqtt, mqtt-ws,
  the http reverse proxy, plain coap in proxy mode) runs in every worker; the others (publish mode, DTLS,
  plug-ins without it) run in worker 0 only, beside the bridge: ``[bridge.*]`` (the XMPP session, the
  bridge's MQTT session, the publish ports) is built in worker 0 only (``build_gateway(with_bridge=...)``).
- **Restarts.** A worker that dies is started again after a pause that doubles from ``RESTART_BASE`` up to
  ``RESTART_CAP`` seconds (``Backoff``; back to the base once a worker has run ``STABLE_AFTER`` seconds),
  each restart logged with the exit code. A worker that fails its very first start stops the whole
  gateway (exit 1): the settings or the environment are wrong, and restarting will not mend them.
- **Signals.** SIGTERM or SIGINT: forwarded (SIGTERM) to every worker, which drains as one process does;
  the supervisor waits for them and exits 0. SIGHUP: forwarded; each worker reloads the settings file as
  one process does (handlers reload, so live revocations and grant changes reach each worker's sessions).
  A worker whose supervisor dies (even by SIGKILL) sees its pipe close and shuts down.
- **Metrics and health.** Workers keep their metrics in prometheus_client's multiprocess files
  (``PROMETHEUS_MULTIPROC_DIR``, a temporary directory of the supervisor's); the supervisor serves their sum
  at ``[metrics] address`` ``/metrics`` (``mark_process_dead`` for every worker that exits), and ``/health``
  lists each worker (index, pid, state, restarts, last exit code, and its own health: the Gateway's plus
  its connections per listener), which each worker serves on a private 127.0.0.1 port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gevent
import gevent.os
from gevent import subprocess as gsubprocess
from gevent.event import Event
from loguru import logger
from prometheus_client import multiprocess

from ferryman.actors.log import configure_logging
from ferryman.actors.metrics import MetricsServer
from ferryman.config import ListenerSettings, MetricsSettings, Settings, format_address, parse_address
from ferryman.protocols.sockets import reserve_tcp_port

__all__ = [
    "Backoff",
    "WorkerPlan",
    "WorkerRole",
    "in_every_worker",
    "plan_workers",
    "supervise",
    "worker_settings",
]

RESTART_BASE = 0.5  # seconds before the first restart of a worker that died
RESTART_CAP = 30.0  # the longest pause between restarts
STABLE_AFTER = 30.0  # a worker that ran this long starts the doubling from RESTART_BASE again
HEALTH_TIMEOUT = 1.0  # seconds a worker may take to answer the supervisor's /health
SAMPLE_EVERY = 10.0  # seconds between a worker's samples of its scrape-time gauges (actors, greenlets)
READY_POLL = 0.1  # seconds between the supervisor's looks for a starting worker's ready file
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# ------------------------------------------------------------------------------------------------ placement


def in_every_worker(listener_cls: Any, settings: ListenerSettings) -> bool:
    """Whether ``listener_cls`` runs in every worker with these settings (its classmethod
    ``in_every_worker``); a class without one (a plug-in) runs in worker 0 only."""
    decide = getattr(listener_cls, "in_every_worker", None)
    return bool(decide(settings)) if callable(decide) else False


def worker_settings(settings: Settings, classes: Mapping[str, Any], index: int) -> Settings:
    """The settings worker ``index`` runs: its listeners (all in worker 0, those that run in every worker
    elsewhere) and no metrics address (the supervisor serves /metrics; a worker serves its own health on a
    private port)."""
    listeners = settings.listeners
    if index != 0:
        listeners = tuple(ls for ls in listeners if in_every_worker(classes.get(ls.protocol), ls))
    return replace(settings, listeners=listeners, metrics=MetricsSettings(address=""))


@dataclass(frozen=True)
class WorkerPlan:
    """What the supervisor decided before starting a worker: the listeners every worker runs (by index in
    ``settings.listeners``) and, of those, the TCP ones, whose ports it holds."""

    count: int
    spread: tuple[int, ...]
    tcp: tuple[int, ...]


def plan_workers(settings: Settings, classes: Mapping[str, Any], count: int) -> WorkerPlan:
    """Which listeners run in every worker (the others run in worker 0 only)."""
    spread: list[int] = []
    tcp: list[int] = []
    for i, ls in enumerate(settings.listeners):
        cls = classes.get(ls.protocol)
        if not in_every_worker(cls, ls):
            continue
        spread.append(i)
        if getattr(getattr(cls, "kind", None), "transport", "tcp") == "tcp":
            tcp.append(i)
    return WorkerPlan(count, tuple(spread), tuple(tcp))


# ------------------------------------------------------------------------------------------------ restarts


@dataclass
class Backoff:
    """The pause before a dead worker's restart: ``base``, doubling with every death in a row up to ``cap``;
    a worker that ran ``stable_after`` seconds before it died starts from ``base`` again."""

    base: float = RESTART_BASE
    cap: float = RESTART_CAP
    stable_after: float = STABLE_AFTER
    failures: int = 0

    def after_exit(self, ran_for: float) -> float:
        """The pause before the next start of a worker that ran ``ran_for`` seconds and died."""
        if ran_for >= self.stable_after:
            self.failures = 0
        self.failures += 1
        return float(min(self.cap, self.base * 2 ** min(self.failures - 1, 32)))


def describe_exit(code: int | None) -> str:
    """``code 1``, ``signal SIGKILL``: a Popen return code as a log line says it."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


# ------------------------------------------------------------------------------------------------ supervisor


@dataclass
class WorkerSlot:
    """One worker index and the process that holds it now."""

    index: int
    backoff: Backoff = field(default_factory=Backoff)
    proc: Any = None
    pid: int = 0
    state: str = "starting"  # starting | running | restarting | stopping | exited
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    ever_ready: bool = False
    health_url: str = ""
    pipe: int = -1  # the write end of the pipe whose closing tells the worker the supervisor is gone
    #: A SIGHUP came while it was starting (before its handlers were in place, SIGHUP would kill it): it
    #: gets one once it is ready, in case it read the settings file before the change.
    hup_pending: bool = False


class Supervisor:
    """Starts ``count`` workers, restarts the ones that die, forwards signals, serves the sum of their
    metrics and their health. ``run()`` returns the exit code."""

    def __init__(
        self, settings: Settings, classes: Mapping[str, Any], plan: WorkerPlan, config: str | None
    ) -> None:
        self.settings = settings
        self.classes = classes
        self.plan = plan
        self.config = config
        self.slots = [WorkerSlot(i) for i in range(plan.count)]
        self.stop_event = Event()
        self.stopping = False
        self.exit_code = 0
        self.directory = ""
        self.metrics_dir = ""
        self.env: dict[str, str] = {}
        self.reservations: list[socket.socket] = []
        self.metrics_server: MetricsServer | None = None
        self.started_at = time.time()
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []
        self._all_ready_logged = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def run(self) -> int:
        self.directory = tempfile.mkdtemp(prefix="ferryman-workers-")
        self.metrics_dir = os.path.join(self.directory, "metrics")
        os.mkdir(self.metrics_dir)
        handlers: list[Any] = []
        try:
            if not self._prepare():
                return 1
            handlers = [
                gevent.signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM"),
                gevent.signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT"),
                gevent.signal_handler(signal.SIGHUP, self._on_hup),
            ]
            logger.info(
                "supervisor (pid {}): {} workers; in every worker: {}; in worker 0 only: {}",
                os.getpid(),
                self.plan.count,
                [self.settings.listeners[i].name for i in self.plan.spread] or "none",
                [ls.name for i, ls in enumerate(self.settings.listeners) if i not in self.plan.spread]
                + (["the bridge"] if self.settings.bridge.mqtt is not None else [])
                or "nothing",
            )
            self._greenlets = [gevent.spawn(self._keep, slot) for slot in self.slots]
            self.stop_event.wait()
            self._drain()
            return self.exit_code
        finally:
            for h in handlers:
                h.cancel()
            if self.metrics_server is not None:
                with contextlib.suppress(Exception):
                    self.metrics_server.stop()
            for sock in self.reservations:
                sock.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _prepare(self) -> bool:
        """Hold the TCP ports, start /metrics and /health; False: cannot start."""
        env = dict(os.environ)
        env.pop(MULTIPROC_ENV, None)
        if self.settings.metrics.address:  # without /metrics nobody reads the files: plain values
            env[MULTIPROC_ENV] = self.metrics_dir
        env["AIOCOAP_REUSE_PORT"] = "1"  # aiocoap's udp6 transport: every worker joins the port's group
        for i in self.plan.tcp:
            ls = self.settings.listeners[i]
            try:
                sock = reserve_tcp_port(ls.host, ls.port)
            except OSError as exc:
                logger.error("cannot start: listener {!r} cannot listen on {}: {}", ls.name, ls.address, exc)
                return False
            self.reservations.append(sock)
        self.env = env
        if self.settings.metrics.address:
            host, port = parse_address(self.settings.metrics.address)
            self.metrics_server = MetricsServer(
                (host, port), WorkersMetrics(self.metrics_dir, self), self.health
            )
            try:
                self.metrics_server.start()
            except OSError as exc:
                logger.error(
                    "cannot start: metrics cannot listen on {}: {}",
                    self.settings.metrics.address,
                    exc.strerror or exc,
                )
                self.metrics_server = None
                return False
        return True

    def _command(self, slot: WorkerSlot, fd: int) -> list[str]:
        command = [sys.executable, "-m", "ferryman", "run"]
        if self.config:
            command += ["--config", self.config]
        return [
            *command,
            "--worker-index",
            str(slot.index),
            "--worker-dir",
            self.directory,
            "--worker-fd",
            str(fd),
        ]

    def _spawn(self, slot: WorkerSlot) -> None:
        read_end, write_end = os.pipe()
        try:
            slot.proc = gsubprocess.Popen(self._command(slot, read_end), env=self.env, pass_fds=(read_end,))
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        slot.pipe = write_end
        slot.pid = slot.proc.pid
        slot.state = "starting"
        slot.started_at = time.monotonic()
        slot.health_url = ""
        slot.hup_pending = False

    def _keep(self, slot: WorkerSlot) -> None:
        """Keeps one worker index alive until the supervisor stops (one greenlet per index)."""
        while not self.stop_event.is_set():
            try:
                self._spawn(slot)
            except OSError as exc:
                logger.error("cannot start worker {}: {}", slot.index, exc)
                self._fatal()
                return
            if self.stop_event.is_set():  # stopped while it was being started: the drain may not see it
                with contextlib.suppress(OSError):
                    slot.proc.send_signal(signal.SIGTERM)
            ready = self._wait_ready(slot)
            code = slot.proc.wait()
            self._reap(slot, code)
            if self.stop_event.is_set():
                slot.state = "exited"
                return
            if not ready and not slot.ever_ready:
                logger.error(
                    "worker {} (pid {}) exited with {} before it was ready: stopping (see its log above)",
                    slot.index,
                    slot.pid,
                    describe_exit(code),
                )
                slot.state = "exited"
                self._fatal()
                return
            pause = slot.backoff.after_exit(time.monotonic() - slot.started_at)
            slot.restarts += 1
            slot.state = "restarting"
            logger.warning(
                "worker {} (pid {}) exited with {}: restarting it in {:.1f} s (restart {})",
                slot.index,
                slot.pid,
                describe_exit(code),
                pause,
                slot.restarts,
            )
            self.stop_event.wait(pause)  # a stop while waiting ends the wait and the loop

    def _wait_ready(self, slot: WorkerSlot) -> bool:
        """Waits until the worker wrote its ready file (True) or exited (False)."""
        path = Path(self.directory, f"worker-{slot.index}.json")
        while slot.proc.poll() is None:
            info = _read_json(path)
            if info is not None and info.get("pid") == slot.pid:
                slot.health_url = f"http://{info['health']}/health"
                slot.state = "running"
                slot.ever_ready = True
                logger.info("worker {} (pid {}) ready", slot.index, slot.pid)
                if slot.hup_pending:
                    slot.hup_pending = False
                    with contextlib.suppress(OSError):
                        slot.proc.send_signal(signal.SIGHUP)
                if not self._all_ready_logged and all(s.state == "running" for s in self.slots):
                    self._all_ready_logged = True
                    logger.info("all {} workers ready", len(self.slots))
                return True
            gevent.sleep(READY_POLL)
        return False

    def _reap(self, slot: WorkerSlot, code: int) -> None:
        slot.last_exit = code
        slot.health_url = ""
        if slot.pipe >= 0:
            os.close(slot.pipe)
            slot.pipe = -1
        # its live gauges leave the sums
        multiprocess.mark_process_dead(slot.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        with contextlib.suppress(OSError):
            path = Path(self.directory, f"worker-{slot.index}.json")
            info = _read_json(path)
            if info is not None and info.get("pid") == slot.pid:
                path.unlink()

    def _fatal(self) -> None:
        self.exit_code = 1
        self.stop_event.set()

    def _drain(self) -> None:
        """Every worker gets SIGTERM and drains; the ones still there after the drain time are killed."""
        self.stopping = True
        live = [s for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for slot in live:
            slot.state = "stopping"
            with contextlib.suppress(OSError):
                slot.proc.send_signal(signal.SIGTERM)
        timeout = 2 * float(self.settings.shutdown_timeout) + 10.0
        gevent.joinall(self._greenlets, timeout=timeout)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                logger.warning(
                    "worker {} (pid {}) did not stop within {:.0f} s: killed", slot.index, slot.pid, timeout
                )
                with contextlib.suppress(OSError):
                    slot.proc.kill()
                slot.proc.wait()
        gevent.joinall(self._greenlets, timeout=5)
        logger.info("{} worker(s) stopped", len(live))

    # -- signals ---------------------------------------------------------------------------------------
    def _on_stop_signal(self, signame: str) -> None:
        if not self.stop_event.is_set():
            logger.info("{} received: stopping {} worker(s)", signame, len(self.slots))
        self.stop_event.set()

    def _on_hup(self) -> None:
        """Forwarded to the running workers; a starting one gets it once it is ready (see hup_pending), a
        restarting one reads the file when it starts."""
        reloading = 0
        for slot in self.slots:
            if slot.state == "running" and slot.proc.poll() is None:
                reloading += 1
                with contextlib.suppress(OSError):
                    slot.proc.send_signal(signal.SIGHUP)
            elif slot.state == "starting":
                slot.hup_pending = True
        logger.info("SIGHUP received: {} worker(s) reloading", reloading)

    # -- observability ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Each worker's index, pid, state, restarts, last exit code and its own /health; ``status``:
        ``ok`` (every worker ok), ``degraded`` (some: still serving, 200), ``unavailable`` (none: 503)."""
        jobs = {
            slot.index: gevent.spawn(_fetch_health, slot.health_url)
            for slot in self.slots
            if slot.state == "running" and slot.health_url
        }
        gevent.joinall(list(jobs.values()), timeout=HEALTH_TIMEOUT + 0.5)
        workers: list[dict[str, Any]] = []
        ok = 0
        for slot in self.slots:
            entry: dict[str, Any] = {
                "index": slot.index,
                "pid": slot.pid,
                "state": slot.state,
                "restarts": slot.restarts,
                "last_exit": slot.last_exit,
            }
            job = jobs.get(slot.index)
            if job is not None:
                entry["health"] = job.value if job.successful() and job.value is not None else None
            if entry.get("health") and entry["health"].get("status") == "ok":
                ok += 1
            workers.append(entry)
        status = "ok" if ok == len(self.slots) else "degraded" if ok else "unavailable"
        if self.stopping:
            status = "unavailable"
        return {
            "status": status,
            "supervisor": {"pid": os.getpid(), "uptime_s": round(time.time() - self.started_at, 1)},
            "workers": workers,
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fetch_health(url: str) -> dict[str, Any] | None:
    """A worker's /health JSON (its body also when it answers 503); None when it does not answer."""
    try:
        with urllib.request.urlopen(
            url, timeout=HEALTH_TIMEOUT
        ) as response:  # a worker's own port on 127.0.0.1
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (OSError, ValueError):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class WorkersMetrics:
    """The supervisor's /metrics: the workers' multiprocess files summed (counters: every worker that
    ever ran; gauges: the live ones), and the supervisor's own worker counts."""

    def __init__(self, path: str, supervisor: Supervisor) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self.registry, path=path)  # type: ignore[no-untyped-call]
        self.registry.register(_SupervisorCollector(supervisor))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _SupervisorCollector:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        slots = self.supervisor.slots
        running = GaugeMetricFamily("ferryman_workers_running", "Worker processes running (ready)")
        running.add_metric([], sum(1 for s in slots if s.state == "running"))
        restarts = CounterMetricFamily(
            "ferryman_worker_restarts", "Worker processes started again after they died", labels=["worker"]
        )
        for slot in slots:
            restarts.add_metric([str(slot.index)], slot.restarts)
        return [running, restarts]


def supervise(settings: Settings, classes: Mapping[str, Any], count: int, config: str | None) -> int | None:
    """``ferryman run`` with ``count`` > 1 workers: the supervisor's whole life; its exit code. None when
    no listener can run in more than one worker (then one process serves, as with ``workers = 1``)."""
    plan = plan_workers(settings, classes, count)
    if not plan.spread:
        logger.info(
            "workers = {}: no listener runs in every worker (only worker 0 would serve): running one process",
            count,
        )
        return None
    configure_logging(settings.log.level, settings.log.format, "supervisor")
    return Supervisor(settings, classes, plan, config).run()


# ------------------------------------------------------------------------------------------------ worker


class WorkerRole:
    """What ``ferryman run --worker-index I`` does beside running its Gateway: the settings it runs, its
    private /health, the ready file the supervisor waits for, the gauge samples, and the watch on the
    supervisor (the pipe ``fd``: its end closes when the supervisor is gone)."""

    def __init__(self, index: int, directory: str, fd: int, classes: Mapping[str, Any]) -> None:
        self.index = index
        self.directory = directory
        self.fd = fd
        self.classes = classes
        self.gateway: Any = None
        self.server: MetricsServer | None = None
        self.orphaned = False  # the supervisor is gone: its directory is left to the workers to remove
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []

    def settings_for(self, settings: Settings) -> Settings:
        return worker_settings(settings, self.classes, self.index)

    def gateway_options(self) -> dict[str, Any]:
        """``build_gateway`` keywords: the bridge in worker 0 only; SO_REUSEPORT sockets everywhere."""
        return {"with_bridge": self.index == 0, "reuse_port": True}

    def started(self, gateway: Any, stop: Event) -> None:
        """The Gateway is up: serve /health privately, tell the supervisor, sample gauges, watch it."""
        self.gateway = gateway
        self.server = MetricsServer(("127.0.0.1", 0), gateway.metrics, self.health)
        self.server.start()
        host, port = self.server.address[:2]
        ready = {"pid": os.getpid(), "index": self.index, "health": format_address(host, port)}
        path = Path(self.directory, f"worker-{self.index}.json")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(ready))
        os.replace(tmp, path)
        self._greenlets = [gevent.spawn(self._watch, stop)] if self.fd >= 0 else []
        if os.environ.get(MULTIPROC_ENV):  # the supervisor sums the files: scrape-time gauges as values
            self._greenlets.append(gevent.spawn(self._sample))

    def stopped(self) -> None:
        for g in self._greenlets:
            g.kill(block=False)
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
        if self.orphaned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def health(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(self.gateway.health())
        registry = self.gateway.metrics.registry
        names = list(self.gateway.listeners)
        state.update(
            worker=self.index,
            pid=os.getpid(),
            connections_open={
                n: int(registry.get_sample_value("ferryman_connections_open", {"listener": n}) or 0)
                for n in names
            },
            connections_total={
                n: int(registry.get_sample_value("ferryman_connections_total", {"listener": n}) or 0)
                for n in names
            },
        )
        return state

    def _sample(self) -> None:
        while True:
            self.gateway.metrics.sample_process_gauges()
            gevent.sleep(SAMPLE_EVERY)

    def _watch(self, stop: Event) -> None:
        """Returns when the supervisor's end of the pipe closes (it exited, or was killed): stops."""
        try:
            gevent.os.make_nonblocking(self.fd)
            while gevent.os.nb_read(self.fd, 64):
                pass
        except OSError:
            pass
        if not stop.is_set():
            logger.warning("worker {}: the supervisor is gone: shutting down", self.index)
            self.orphaned = True
            stop.set()
