"""MQTT scale: 10,000 connections held through ferryman, its memory per connection, and churn meanwhile.

    .venv/bin/python bench/mqtt_scale.py [--connections N] [--churn-seconds S] [--profile FILE]

One mosquitto (``max_connections -1``) and one gateway (static handler, metrics on) on free 127.0.0.1 ports.
The generator is this process: non-blocking raw sockets on one epoll, pre-encoded MQTT 3.1.1 CONNECT
(user ``bench``, keep-alive 60 s, a unique client id patched into fixed-width digits), PINGREQ and
DISCONNECT bytes; every CONNACK must be ``20 02 00 00``. Stages:

1. idle: the gateway's RSS, fds and /metrics gauges; then 2 s of churn straight to mosquitto (no gateway:
   the generator's own ceiling);
2. churn with 0 connections held: workers loop connect -> CONNACK -> DISCONNECT -> close for a fixed time;
3. open half the connections, PINGREQ each (count PINGRESP), wait 8 s (idle connections park), read,
   churn again;
4. open the rest, PINGREQ each, wait, read, churn again (and optionally once more under py-spy);
5. DISCONNECT all held connections, wait for the gateway to drop them, read RSS and /metrics again.

Held connections get a PINGREQ at least every 30 s, so neither the broker nor the gateway expires them.
The last lines are ``name: value`` figures.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    DISCONNECT_PACKET,
    CpuMeter,
    Gateway,
    Mosquitto,
    connect_packet,
    fetch_metrics,
    free_port,
    gateway_config,
    machine_line,
    nofile_limit,
    open_fds,
    percentile,
    proc_status_kib,
    process_cpu_ticks,
    raise_nofile,
    start_pyspy,
    stop_process,
    summarize_folded,
    with_metrics,
)

KEEPALIVE = 60  # seconds, in every CONNECT
PARK_SETTLE = 8.0  # seconds after a stage's pings before its reading: idle connections have parked
PING_INTERVAL = 30.0  # held connections get a PINGREQ at least this often (half the keep-alive)
CONNACK_TIMEOUT = 10.0  # a connection without CONNACK after this long is a failure
HOLD_IN_FLIGHT = 100  # held connections being opened at once (the gateway's listen backlog is 128)
CHURN_WORKERS = 32  # churn sockets in flight at once, each looping connect -> CONNACK -> DISCONNECT
CHURN_WARMUP = 1.0  # seconds of churn before the measured window
CHURN_SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # churn sockets' source addresses, in turn
GATEWAY_SPARE_FDS = 32  # fds kept free in the gateway beyond 2 per connection (listener, metrics, logs, ...)
METRICS_TIMEOUT = 60.0  # /metrics counts greenlets with gc.get_objects(): slow with many connections
MAX_FAILURES = 1000  # a stage stops early after this many failures: the run is not valid anyway

CONNACK_OK = b"\x20\x02\x00\x00"  # CONNACK, session present 0, return code 0
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # port chosen at connect()

HELD, CHURN = 0, 1
KIND_NAMES = ("held", "churn")
CONNECTING, WAIT_CONNACK, OPEN = 0, 1, 2


class ConnectTemplate:
    """Pre-encoded CONNECT packets that differ only in a fixed-width decimal client id."""

    def __init__(self, prefix: str, width: int, keepalive: int) -> None:
        marker = "#" * width
        packet = connect_packet(prefix + marker, keepalive=keepalive)
        at = packet.index(marker.encode())
        self.head, self.tail, self.width = packet[:at], packet[at + width :], width

    def packet(self, n: int) -> bytes:
        return self.head + b"%0*d" % (self.width, n % 10**self.width) + self.tail


class Conn:
    __slots__ = ("buf", "kind", "sock", "started", "state")

    def __init__(self, kind: int, sock: socket.socket, started: float) -> None:
        self.kind = kind
        self.sock = sock
        self.started = started
        self.state = CONNECTING
        self.buf = b""


@dataclass
class ChurnResult:
    connects: int
    seconds: float
    failures: int
    latencies_ms: list[float]
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.connects / self.seconds if self.seconds else 0.0


class Generator:
    """All client sockets of the benchmark on one epoll: held connections and churn workers."""

    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}  # every socket not yet closed, by fd
        self.pending: dict[int, Conn] = {}  # waiting for connect() or CONNACK
        self.held: dict[int, Conn] = {}  # held and past CONNACK
        self.pending_kind = [0, 0]
        self.templates = (ConnectTemplate("hold-", 7, KEEPALIVE), ConnectTemplate("churn-", 9, KEEPALIVE))
        self.next_id = [0, 0]
        self.failures: Counter[str] = Counter()
        self.held_dropped = 0  # held connections the far side closed
        self.unexpected = 0  # held connections that got something other than PINGRESP
        self.pingreq_sent = 0
        self.pingresp_received = 0
        self.next_ping = float("inf")
        self.next_check = 0.0
        self.churning = False
        self.churn_done = 0
        self.latencies: list[float] = []
        self.source = 0

    # -------------------------------------------------------------------------------------- sockets
    def open(self, kind: int) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self.failures[f"{KIND_NAMES[kind]}: socket(): {exc.strerror}"] += 1
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if kind == CHURN:
                # Churn leaves a TIME_WAIT per connection on this side: spread them over several source
                # addresses, each with its own ephemeral port range towards the gateway.
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((CHURN_SOURCES[self.source], 0))
                self.source = (self.source + 1) % len(CHURN_SOURCES)
            err = sock.connect_ex(self.addr)
        except OSError as exc:
            err = exc.errno or errno.EIO
        conn = Conn(kind, sock, time.perf_counter())
        fd = sock.fileno()
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.failures[f"{KIND_NAMES[kind]}: connect(): {os.strerror(err)}"] += 1
            return
        self.conns[fd] = conn
        self.pending[fd] = conn
        self.pending_kind[kind] += 1
        if err == 0:
            self._send_connect(conn)
            self.ep.register(fd, select.EPOLLIN)
        else:
            self.ep.register(fd, select.EPOLLOUT)

    def _send_connect(self, conn: Conn) -> None:
        kind = conn.kind
        packet = self.templates[kind].packet(self.next_id[kind])
        self.next_id[kind] += 1
        conn.sock.send(packet)  # ~40 bytes into an empty socket buffer: never partial
        conn.state = WAIT_CONNACK

    def _forget(self, fd: int, conn: Conn) -> None:
        del self.conns[fd]
        if self.pending.pop(fd, None) is not None:
            self.pending_kind[conn.kind] -= 1
        self.held.pop(fd, None)
        conn.sock.close()  # also leaves the epoll set

    def _fail(self, fd: int, conn: Conn, reason: str) -> None:
        self._forget(fd, conn)
        if conn.state == OPEN:
            self.held_dropped += 1
            return
        self.failures[f"{KIND_NAMES[conn.kind]}: {reason}"] += 1
        if conn.kind == CHURN and self.churning:
            self.open(CHURN)

    def _event(self, fd: int) -> None:
        conn = self.conns.get(fd)
        if conn is None:
            return
        sock = conn.sock
        if conn.state == CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(fd, conn, f"connect: {os.strerror(err)}")
                return
            try:
                self._send_connect(conn)
            except OSError as exc:
                self._fail(fd, conn, f"send CONNECT: {exc.strerror}")
                return
            self.ep.modify(fd, select.EPOLLIN)
            return
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(fd, conn, f"recv: {exc.strerror}")
            return
        if conn.state == OPEN:
            if not data:
                self._fail(fd, conn, "closed")
                return
            n = data.count(PINGRESP)
            self.pingresp_received += n
            if 2 * n != len(data):
                self.unexpected += 1
            return
        if not data:
            self._fail(fd, conn, "closed before CONNACK")
            return
        conn.buf += data
        if len(conn.buf) < 4:
            return
        if conn.buf[:4] != CONNACK_OK:
            self._fail(fd, conn, f"CONNACK {conn.buf[:4].hex(' ')}")
            return
        if conn.kind == HELD:
            del self.pending[fd]
            self.pending_kind[HELD] -= 1
            conn.state = OPEN
            conn.buf = b""
            self.held[fd] = conn
            return
        self.latencies.append(time.perf_counter() - conn.started)
        self.churn_done += 1
        try:
            sock.send(DISCONNECT_PACKET)
        except OSError as exc:
            self.failures[f"churn: send DISCONNECT: {exc.strerror}"] += 1
        self._forget(fd, conn)
        if self.churning:
            self.open(CHURN)

    # -------------------------------------------------------------------------------------- loop
    def poll(self, timeout: float) -> None:
        """Housekeeping (keep-alive pings, CONNACK timeouts), then one epoll wait of at most ``timeout``."""
        now = time.monotonic()
        if now >= self.next_ping:
            self.ping_all()
        if now >= self.next_check:
            self.next_check = now + 1.0
            late = time.perf_counter() - CONNACK_TIMEOUT
            for fd, conn in list(self.pending.items()):
                if conn.started < late:
                    self._fail(fd, conn, f"no CONNACK within {CONNACK_TIMEOUT:g} s")
        for fd, _ in self.ep.poll(max(0.0, timeout), 1024):
            self._event(fd)

    def failure_count(self) -> int:
        return sum(self.failures.values()) + self.held_dropped

    def ping_all(self) -> int:
        """One PINGREQ on every held connection."""
        sent = 0
        for conn in self.held.values():
            try:
                conn.sock.send(PINGREQ)
                sent += 1
            except OSError:
                pass  # a closed connection shows up as readable with EOF and is counted there
        self.pingreq_sent += sent
        self.next_ping = time.monotonic() + PING_INTERVAL
        return sent

    # -------------------------------------------------------------------------------------- stages
    def open_held(self, target: int, timeout: float) -> float:
        """Open held connections until ``target`` are past CONNACK; returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        failures0 = self.failure_count()
        while len(self.held) < target and time.monotonic() < deadline:
            if self.failure_count() - failures0 > MAX_FAILURES:
                break
            while (
                len(self.held) + self.pending_kind[HELD] < target and self.pending_kind[HELD] < HOLD_IN_FLIGHT
            ):
                self.open(HELD)
            self.poll(0.05)
        return time.monotonic() - t0

    def ping_round(self, timeout: float = 30.0) -> tuple[int, int, float]:
        """PINGREQ on every held connection; (sent, PINGRESP received, seconds until all came back)."""
        received0 = self.pingresp_received
        t0 = time.monotonic()
        sent = self.ping_all()
        while self.pingresp_received - received0 < sent and time.monotonic() < t0 + timeout:
            self.poll(0.05)
        return sent, self.pingresp_received - received0, time.monotonic() - t0

    def _churn_failures(self) -> int:
        return sum(n for k, n in self.failures.items() if k.startswith("churn"))

    def churn(self, seconds: float, workers: int, meter: CpuMeter | None = None) -> ChurnResult:
        """``workers`` sockets loop connect -> CONNACK -> DISCONNECT -> close; counted over ``seconds`` after
        a warm-up."""
        self.churning = True
        for _ in range(workers):
            self.open(CHURN)
        end = time.monotonic() + CHURN_WARMUP
        while time.monotonic() < end:
            self.poll(end - time.monotonic())
        self.churn_done = 0
        self.latencies = []
        failures0 = self._churn_failures()
        if meter is not None:
            meter.start()
        t0 = time.monotonic()
        end = t0 + seconds
        while (now := time.monotonic()) < end and self._churn_failures() - failures0 <= MAX_FAILURES:
            self.poll(min(0.05, end - now))
        elapsed = time.monotonic() - t0
        cpu = meter.stop() if meter is not None else {}
        result = ChurnResult(
            self.churn_done,
            elapsed,
            self._churn_failures() - failures0,
            sorted(1e3 * x for x in self.latencies),
            cpu,
        )
        self.churning = False
        end = time.monotonic() + CONNACK_TIMEOUT + 1  # let the workers in flight finish
        while self.pending_kind[CHURN] and time.monotonic() < end:
            self.poll(0.05)
        return result

    def close_held(self) -> int:
        """DISCONNECT and close every held connection."""
        n = 0
        for fd, conn in list(self.held.items()):
            with contextlib.suppress(OSError):
                conn.sock.send(DISCONNECT_PACKET)
            self._forget(fd, conn)
            n += 1
        self.next_ping = float("inf")
        return n

    def close(self) -> None:
        for fd, conn in list(self.conns.items()):
            self._forget(fd, conn)
        self.ep.close()


# ------------------------------------------------------------------------------------------------ readings


@dataclass
class Reading:
    rss_kib: int
    fds: int
    threads: int  # native threads: the main one plus gevent's thread pool (getaddrinfo runs there)
    gauges: dict[str, float]
    scrape_s: float

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024

    def line(self) -> str:
        g = self.gauges
        gauges = " ".join(f"{k} {g[k]:.0f}" for k in ("connections_open", "actors", "greenlets") if k in g)
        return (
            f"rss {self.rss_mib:.1f} MiB, fds {self.fds}, threads {self.threads}, "
            f"/metrics: {gauges or 'unavailable'} (scrape {self.scrape_s:.2f} s)"
        )


GAUGES = {
    "connections_open": "ferryman_connections_open",
    "actors": "ferryman_actors",
    "greenlets": "ferryman_greenlets",
}


def read_gateway(pid: int, metrics_port: int) -> Reading:
    t0 = time.monotonic()
    try:
        samples = fetch_metrics(metrics_port, timeout=METRICS_TIMEOUT)
    except OSError as exc:
        print(f"  /metrics failed: {exc}")
        samples = {}
    scrape = time.monotonic() - t0
    gauges: dict[str, float] = {}
    for short, name in GAUGES.items():
        values = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
        if values:
            gauges[short] = sum(values)
    return Reading(
        proc_status_kib(pid, "VmRSS"), open_fds(pid), proc_status_kib(pid, "Threads"), gauges, scrape
    )


@dataclass
class Drain:
    open_zero_s: float  # until ferryman_connections_open read 0 (inf: never within the timeout)
    actors_back_s: float  # until ferryman_actors was back at its idle value too
    slowest_scrape_s: float
    gateway_cpu_s: float


def wait_gateway_drained(pid: int, metrics_port: int, idle_actors: float, timeout: float) -> Drain:
    """Poll /metrics until no connection is open and the actor count is back to ``idle_actors``."""
    t0 = time.monotonic()
    cpu0 = process_cpu_ticks(pid)
    open_zero = actors_back = float("inf")
    slowest = 0.0
    while time.monotonic() - t0 < timeout:
        s0 = time.monotonic()
        try:
            samples = fetch_metrics(metrics_port, timeout=METRICS_TIMEOUT)
        except OSError:
            samples = {}
        slowest = max(slowest, time.monotonic() - s0)
        if samples:
            open_now = sum(v for k, v in samples.items() if k.startswith(GAUGES["connections_open"]))
            if open_now == 0 and open_zero == float("inf"):
                open_zero = time.monotonic() - t0
            if open_now == 0 and samples.get(GAUGES["actors"], -1) <= idle_actors:
                actors_back = time.monotonic() - t0
                break
        time.sleep(0.2)
    cpu = (process_cpu_ticks(pid) - cpu0) / os.sysconf("SC_CLK_TCK")
    return Drain(open_zero, actors_back, slowest, cpu)


def fmt_churn(r: ChurnResult, held: int) -> str:
    lat = r.latencies_ms
    cpu = " ".join(f"{k} {v:.2f}" for k, v in r.cpu.items())
    us = 1e6 * r.cpu.get("gateway", 0.0) / r.rate if r.rate else 0.0
    return (
        f"{r.rate:.0f} connects/s over {r.seconds:.1f} s with {held} held ({r.connects} connects, "
        f"{r.failures} failures); connect->CONNACK p50 {percentile(lat, 50):.1f} ms "
        f"p99 {percentile(lat, 99):.1f} ms max {lat[-1] if lat else 0:.1f} ms\n"
        f"      cores busy: {cpu}" + (f"; gateway CPU {us:.0f} us per connect" if "gateway" in r.cpu else "")
    )


# ------------------------------------------------------------------------------------------------ main


def code_line() -> str:
    """The commit measured, and whether the working tree differs from it (others edit it meanwhile)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%h %ad %s", "--date=iso"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head or 'unknown'}" + (f" + {len(dirty)} uncommitted file(s)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--connections", type=int, default=10_000, help="connections held (default 10000)")
    ap.add_argument("--churn-seconds", type=float, default=10.0, help="measured churn per stage (default 10)")
    ap.add_argument("--churn-workers", type=int, default=CHURN_WORKERS, help="churn sockets in flight")
    ap.add_argument("--profile", type=Path, help="one more churn at full hold under py-spy; stacks here")
    ap.add_argument("--profile-seconds", type=float, default=5.0, help="length of the profiled churn")
    ap.add_argument(
        "--workdir", type=Path, help="keep configs and logs here (default: a temporary directory)"
    )
    args = ap.parse_args(argv)
    if args.connections < 2 or args.churn_seconds <= 0 or args.churn_workers < 1:
        ap.error("--connections must be >= 2, --churn-seconds and --churn-workers positive")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferryman-scale-"))
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    # The gateway needs two fds per connection (device + broker socket); every child inherits this limit.
    want_fds = 2 * (args.connections + args.churn_workers) + 1000
    nofile_note = raise_nofile(want_fds)
    print(f"machine: {machine_line()}")
    print(f"started: {started}; workdir {workdir}")
    print(f"code: {code_line()}")
    print(f"RLIMIT_NOFILE: {nofile_note}")
    sys.stdout.flush()

    broker = Mosquitto(workdir, extra="max_connections -1\n")
    metrics_port = free_port()
    gateway: Gateway | None = None
    gen: Generator | None = None
    figures: list[tuple[str, str]] = []
    churns: dict[str, ChurnResult] = {}
    held_during: dict[str, int] = {}
    try:
        broker.start()
        gw_port = free_port()
        config = with_metrics(gateway_config(gw_port, broker.port), metrics_port)
        gateway = Gateway(workdir, broker.port, config=config, port=gw_port)
        gateway.start()
        gw_limit, broker_limit = nofile_limit(gateway.pid), nofile_limit(broker.pid)
        time.sleep(1.0)
        idle = read_gateway(gateway.pid, metrics_port)
        # What the gateway's fd limit allows: 2 fds per held connection and per churn connection in flight.
        fit = (gw_limit - idle.fds - GATEWAY_SPARE_FDS) // 2 - args.churn_workers
        target = args.connections
        print(f"limits: gateway RLIMIT_NOFILE {gw_limit}, mosquitto {broker_limit}, this process {want_fds}")
        if target > fit:
            print(
                f"NOTE: {target} connections need {2 * (target + args.churn_workers) + idle.fds} fds in "
                f"the gateway, its limit is {gw_limit}: holding {fit} instead"
            )
            target = fit
        half = target // 2
        print(
            f"generator: one process, non-blocking raw sockets on one epoll; MQTT 3.1.1 CONNECT pre-encoded "
            f"(keep-alive {KEEPALIVE} s); {HOLD_IN_FLIGHT} held connections opened at a time; "
            f"{args.churn_workers} churn workers from {len(CHURN_SOURCES)} source addresses"
        )
        print(f"stage idle: {idle.line()}")
        sys.stdout.flush()

        # The generator's own ceiling: the same churn straight to mosquitto, no gateway in the path.
        direct = Generator(broker.port)
        try:
            ceiling = direct.churn(
                min(2.0, args.churn_seconds),
                args.churn_workers,
                CpuMeter({"mosquitto": [broker.pid], "generator": [os.getpid()]}),
            )
        finally:
            direct.close()
        print(f"stage churn direct to mosquitto (the generator's ceiling): {fmt_churn(ceiling, 0)}")
        gen = Generator(gateway.port)
        watch = {"gateway": [gateway.pid], "mosquitto": [broker.pid], "generator": [os.getpid()]}

        def churn_stage(label: str) -> None:
            assert gen is not None and gateway is not None
            held = len(gen.held)
            r = gen.churn(args.churn_seconds, args.churn_workers, CpuMeter(watch))
            churns[label] = r
            held_during[label] = held
            after = read_gateway(gateway.pid, metrics_port)
            print(f"stage churn at {label}: {fmt_churn(r, held)}")
            print(f"      after: {after.line()}")
            sys.stdout.flush()

        churn_stage("0")
        after_churn0 = read_gateway(gateway.pid, metrics_port)

        readings: dict[int, Reading] = {}
        for stage_target, label in ((half, str(args.connections // 2)), (target, str(args.connections))):
            before = len(gen.held)
            seconds = gen.open_held(stage_target, timeout=max(60.0, stage_target / 200))
            opened = len(gen.held) - before
            sent, back, ping_s = gen.ping_round()
            # Idle connections park (protocols/mqtt/parking.py: park_idle_after, 5 s by default, then the
            # next sweep, every 2.5 s): the steady state of an idle fleet is what is measured.
            time.sleep(PARK_SETTLE)
            reading = read_gateway(gateway.pid, metrics_port)
            readings[stage_target] = reading
            print(
                f"stage open {len(gen.held)} held: {opened} opened in {seconds:.1f} s "
                f"({opened / seconds if seconds else 0:.0f}/s); PINGREQ {sent} -> PINGRESP {back} "
                f"in {ping_s:.2f} s; failures so far {gen.failure_count()}"
            )
            print(f"      {reading.line()}")
            sys.stdout.flush()
            if len(gen.held) < stage_target:
                print(f"      only {len(gen.held)} of {stage_target} connections open: {dict(gen.failures)}")
            churn_stage(label)

        full = readings[target]
        if args.profile is not None:
            spy = start_pyspy(gateway.pid, args.profile_seconds + 1, args.profile)
            time.sleep(0.5)
            r = gen.churn(args.profile_seconds, args.churn_workers, CpuMeter(watch))
            try:
                spy.wait(args.profile_seconds + 30)
            except Exception:
                stop_process(spy)
            print(f"profile: churn at {len(gen.held)} held under py-spy: {fmt_churn(r, len(gen.held))}")
            print(f"profile: folded stacks in {args.profile}")
            if args.profile.exists():
                print(summarize_folded(args.profile))
        after_churn = read_gateway(gateway.pid, metrics_port)
        final_sent, final_back, _ = gen.ping_round()
        held_at_end = len(gen.held)
        closed = gen.close_held()
        drain = wait_gateway_drained(gateway.pid, metrics_port, idle.gauges.get("actors", 0), 120.0)
        time.sleep(2.0)
        end = read_gateway(gateway.pid, metrics_port)
        print(
            f"stage closed: {closed} held connections disconnected; gateway: 0 open after "
            f"{drain.open_zero_s:.1f} s, actors back to idle after {drain.actors_back_s:.1f} s "
            f"(gateway CPU {drain.gateway_cpu_s:.1f} s; slowest /metrics scrape meanwhile "
            f"{drain.slowest_scrape_s:.2f} s)"
        )
        print(f"      {end.line()}; peak rss (VmHWM) {proc_status_kib(gateway.pid, 'VmHWM') / 1024:.1f} MiB")
        # Counts above the idle ones are what was not released; fewer is fine. Each native thread gevent's
        # thread pool started meanwhile (getaddrinfo runs there) holds 2 greenlets of its own: allowed.
        pool_greenlets = 2 * max(0, end.threads - idle.threads)
        leaks = [
            f"{k} {idle.gauges.get(k, 0):.0f} -> {end.gauges.get(k, 0):.0f}"
            for k in GAUGES
            if end.gauges.get(k, 0) > idle.gauges.get(k, 0) + (pool_greenlets if k == "greenlets" else 0)
        ]
        print(f"      back to the idle baseline: {'yes' if not leaks else 'NO: ' + ', '.join(leaks)}")

        per_conn = (full.rss_kib - idle.rss_kib) / target
        marginal = (full.rss_kib - readings[half].rss_kib) / (target - half)
        rss_10k = (idle.rss_kib + per_conn * 10_000) / 1024
        failures = gen.failure_count()
        clamped = target < args.connections
        figures += [
            (
                "connections",
                f"{target}"
                + (
                    f" ({args.connections} asked: the gateway's fd limit {gw_limit} allows {target} plus the "
                    "churn workers)"
                    if clamped
                    else ""
                ),
            ),
            ("rss_idle_mib", f"{idle.rss_mib:.1f}"),
            ("rss_after_churn_at_0_mib", f"{after_churn0.rss_mib:.1f}"),
            ("rss_half_mib", f"{readings[half].rss_mib:.1f} at {half} held"),
            ("rss_full_mib", f"{full.rss_mib:.1f} at {target} held"),
            (
                "rss_10k_mib",
                f"{full.rss_mib:.1f}"
                if target == 10_000
                else f"{rss_10k:.1f} (scaled from {target} held: idle + 10,000 x per connection)",
            ),
            ("rss_per_connection_kib", f"{per_conn:.1f}  (rss at {target} - idle) / {target}"),
            (
                "rss_per_connection_marginal_kib",
                f"{marginal:.1f}  (rss at {target} - at {half}) / {target - half}",
            ),
            ("rss_after_churn_at_full_mib", f"{after_churn.rss_mib:.1f}"),
            ("rss_after_close_mib", f"{end.rss_mib:.1f}"),
            ("rss_peak_mib", f"{proc_status_kib(gateway.pid, 'VmHWM') / 1024:.1f}"),
            ("metrics_scrape_s_at_full", f"{full.scrape_s:.2f}"),
            (
                "close_drain_s",
                f"{drain.open_zero_s:.1f} to 0 open, {drain.actors_back_s:.1f} to idle actors "
                f"(gateway CPU {drain.gateway_cpu_s:.1f} s)",
            ),
        ]
        for label, r in churns.items():
            figures.append((f"churn_connects_per_s_at_{label}", f"{r.rate:.0f}  ({held_during[label]} held)"))
        for label, r in churns.items():
            us = 1e6 * r.cpu.get("gateway", 0.0) / r.rate if r.rate else 0.0
            figures.append((f"churn_gateway_cpu_us_per_connect_at_{label}", f"{us:.0f}"))
        for label, r in churns.items():
            lat = r.latencies_ms
            figures.append(
                (
                    f"churn_latency_ms_at_{label}",
                    f"p50 {percentile(lat, 50):.1f} p99 {percentile(lat, 99):.1f}",
                )
            )
        slowest = min(r.rate for r in churns.values())
        figures.append(
            (
                "targets",
                f"rss for 10,000 <= 400 MiB: {'met' if rss_10k <= 400 else 'NOT met'} ({rss_10k:.0f}); "
                f"rss per idle connection <= 16 KiB: {'met' if per_conn <= 16 else 'NOT met'} "
                f"({per_conn:.1f}); "
                f"churn >= 1,000/s at every stage: {'met' if slowest >= 1000 else 'NOT met'} "
                f"(slowest {slowest:.0f}/s)",
            )
        )
        figures += [
            ("generator_churn_direct_to_mosquitto_per_s", f"{ceiling.rate:.0f}  (no gateway; the ceiling)"),
            ("pingreq_sent", str(gen.pingreq_sent)),
            ("pingresp_received", str(gen.pingresp_received)),
            ("final_ping_round", f"{final_back} of {final_sent} on {held_at_end} held"),
            ("connect_failures", str(failures)),
        ]
        if gen.failures:
            figures.append(("failure_reasons", ", ".join(f"{k}: {n}" for k, n in gen.failures.most_common())))
        if gen.held_dropped or gen.unexpected:
            figures.append(("held_dropped", f"{gen.held_dropped} (unexpected packets {gen.unexpected})"))
        figures.append(("gateway_back_to_baseline", "yes" if not leaks else "NO: " + ", ".join(leaks)))
        figures.append(("valid", "yes" if failures == 0 and len(readings) == 2 else "NO (failures)"))
    finally:
        if gen is not None:
            gen.close()
        if gateway is not None:
            gateway.stop()
        broker.stop()
    for name, value in figures:
        print(f"{name}: {value}")
    print(f"started: {started}")
    print(f"code: {code_line()}")
    print(f"machine: {machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
