"""MQTT connect rate: new connections per second straight to mosquitto, through HAProxy in TCP mode and
through ferryman, side by side in one run, with the CPU each server spends per connect.

    .venv/bin/python bench/mqtt_connect_rate.py [--clients 4] [--seconds 3] [--reps 3] [--tls] [--no-metrics]
                                                [--key-type ec|rsa] [--workdir DIR]

One connection = TCP connect, (with ``--tls`` a full TLS handshake, no resumption), MQTT 3.1.1 CONNECT (clean
session, user ``bench`` / password ``bench``, a unique client id), CONNACK (must be ``20 02 00 00``),
DISCONNECT, close. ``--clients`` forked processes loop over that as fast as they can; each uses a plain
blocking socket and a pre-encoded CONNECT whose fixed-width client id digits are patched in, and binds its
sockets to 127.0.0.2..9 in turn (``IP_BIND_ADDRESS_NO_PORT``) so TIME_WAIT never runs out of ports.

Paths, measured in turn in every rep against the same server processes:

- ``direct``: mosquitto (``allow_anonymous true``: it checks no password; with ``--tls`` its TLS listener);
- ``haproxy``: ``haproxy`` in TCP mode in front of the same listener (skipped with a note when not installed);
- ``ferryman``: ``python -m ferryman run`` with one MQTT listener (``static`` handler, the password checked;
  with ``--tls`` TLS terminated by the gateway with the same certificate) proxying to mosquitto's plain
  listener. /metrics is on (the default of a deployment) unless ``--no-metrics``.

All clients start at one instant; the first 0.5 s are a warm-up; connects that complete inside the window
after it are counted. Over the same window the parent reads utime + stime of the gateway, HAProxy and
mosquitto from /proc/<pid>/stat: CPU µs per connect = CPU time / connects. That figure barely depends on
other load on the machine; the rates do (the clients share the cores with the servers), so the load of
everything else on the machine (``others``, in cores) and /proc/loadavg are printed with every window.
The last lines are ``name: value`` figures: median rates over the reps, the median per-rep ratio of
ferryman (and HAProxy) to direct, and median CPU µs per connect.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    DISCONNECT_PACKET,
    PYTHON,
    CpuMeter,
    Gateway,
    Mosquitto,
    _Child,
    connect_packet,
    free_port,
    gateway_config,
    machine_line,
    wait_until,
    with_metrics,
)

CONNACK_OK = b"\x20\x02\x00\x00"
WARMUP = 0.5  # seconds of load before the counted window
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # client source addresses, in turn
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_FAILURES = 50  # per client per window: then it stops and the window is reported invalid
ID_WIDTH = 9


class HAProxy(_Child):
    """``haproxy -db`` in TCP mode: one frontend on a free port, one backend server ``target_port``."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.target_port = target_port
        self.conf = workdir / f"haproxy-{self.port}.cfg"
        self.log = workdir / f"haproxy-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            # maxconn: 2 fds per connection + spare must fit the fd limit (20,000 on some machines)
            "global\n  maxconn 4000\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
            f"frontend fe\n  bind 127.0.0.1:{self.port}\n  default_backend be\n"
            f"backend be\n  server s1 127.0.0.1:{self.target_port}\n"
        )
        with self.log.open("ab") as log:
            return subprocess.Popen(
                ["haproxy", "-db", "-f", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log
            )


def haproxy_version() -> str:
    try:
        out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


# ------------------------------------------------------------------------------------------------ clients


def client_main(
    idx: int,
    port: int,
    ca_file: str | None,
    start_at: float,
    win_start: float,
    win_end: float,
    conn: Connection,
) -> None:
    """One load process: connect -> CONNECT -> CONNACK -> DISCONNECT -> close, back to back, until the window
    ends. Sends (connects inside the window, connects in all, failures, first failure)."""
    marker = b"#" * ID_WIDTH
    packet = connect_packet(f"cr{idx}-" + "#" * ID_WIDTH)
    at = packet.index(marker)
    head, tail = packet[:at], packet[at + ID_WIDTH :]
    ctx: ssl.SSLContext | None = None
    if ca_file:
        ctx = ssl.create_default_context(cafile=ca_file)
    addr = ("127.0.0.1", port)
    sources = SOURCES[idx % len(SOURCES) :] + SOURCES[: idx % len(SOURCES)]
    n = counted = failed = 0
    first_error = ""
    mono = time.monotonic
    wait_until(start_at)
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((sources[n & 7], 0))
            sock.settimeout(10.0)
            sock.connect(addr)
            s: socket.socket = sock
            if ctx is not None:
                s = ctx.wrap_socket(sock, server_hostname="localhost")
            s.sendall(head + b"%09d" % n + tail)
            data = s.recv(4)
            while len(data) < 4:
                more = s.recv(4 - len(data))
                if not more:
                    break
                data += more
            if data != CONNACK_OK:
                raise ConnectionError(f"CONNACK {data.hex(' ') or '(closed)'}")
            s.sendall(DISCONNECT_PACKET)
            s.close()
        except (OSError, ConnectionError) as exc:
            failed += 1
            first_error = first_error or repr(exc)
        finally:
            sock.close()
        n += 1
        now = mono()
        if win_start <= now < win_end:
            counted += 1
        if now >= win_end or failed > MAX_FAILURES:
            break
    conn.send((counted, n, failed, first_error))


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def measure(
    port: int, ca_file: str | None, clients: int, seconds: float, watch: dict[str, list[int]]
) -> tuple[float, int, dict[str, float], str]:
    """One window on ``port``: (connects/s, failures, cores busy per group, first failure)."""
    ctx = mp.get_context("fork")
    start_at = time.monotonic() + 0.3
    win_start = start_at + WARMUP
    win_end = win_start + seconds
    pipes, procs = [], []
    for i in range(clients):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=client_main, args=(i, port, ca_file, start_at, win_start, win_end, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    meter = CpuMeter({**watch, "clients": [p.pid for p in procs if p.pid is not None]})
    wait_until(win_start)
    meter.start()
    wait_until(win_end)
    cpu = meter.stop()
    results = []
    for p in pipes:
        if p.poll(30):
            results.append(p.recv())
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    counted = sum(r[0] for r in results)
    failed = sum(r[2] for r in results) + clients - len(results)
    errors = [r[3] for r in results if r[3]]
    return counted / seconds, failed, cpu, errors[0] if errors else ""


# ------------------------------------------------------------------------------------------------ main


def make_pki(workdir: Path, key_type: str = "ec") -> Path:
    pki = workdir / "pki"
    subprocess.run(
        [PYTHON, "-m", "ferryman", "certs", str(pki), "--force", "--key-type", key_type],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # mosquitto started as root drops to its own user: it needs a readable key and directories
    key = workdir / "broker-server.key"
    key.write_bytes((pki / "server.key").read_bytes())
    key.chmod(0o644)
    for d in (workdir, pki):
        d.chmod(0o755)
    return pki


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--seconds", type=float, default=3.0, help="counted window per path per rep (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="reps of all paths (default 3)")
    ap.add_argument("--tls", action="store_true", help="TLS: full handshake per connect")
    ap.add_argument(
        "--key-type",
        choices=("ec", "rsa"),
        default="ec",
        help="with --tls: the certificate's key, EC P-256 (default, as measured so far) or RSA 2048",
    )
    ap.add_argument("--no-metrics", action="store_true", help="the gateway's /metrics endpoint off")
    ap.add_argument(
        "--workdir", type=Path, help="keep configs and logs here (default: a temporary directory)"
    )
    args = ap.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.reps < 1:
        ap.error("--clients, --seconds and --reps must be positive")
    tmp = tempfile.TemporaryDirectory(prefix="ferryman-connect-rate-")
    workdir: Path = args.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"machine: {machine_line()}")
    print(f"started: {started}; loadavg {loadavg()}; workdir {workdir}")

    ca_file: str | None = None
    broker = Mosquitto(workdir, extra="max_connections -1\nset_tcp_nodelay true\n")
    direct_port = broker.port
    pki: Path | None = None
    if args.tls:
        pki = make_pki(workdir, args.key_type)
        ca_file = str(pki / "ca.crt")
        direct_port = free_port()
        broker.extra += f"listener {direct_port} 127.0.0.1\ncertfile {pki}/server.crt\n"
        broker.extra += f"keyfile {workdir}/broker-server.key\n"
    gw_port = free_port()
    config = gateway_config(gw_port, broker.port)
    if not args.no_metrics:
        config = with_metrics(config, free_port())
    if pki is not None:
        config = config.replace(
            f'target = "tcp://127.0.0.1:{broker.port}"\n',
            f'target = "tcp://127.0.0.1:{broker.port}"\n[listener.tls]\n'
            f'cert_file = "{pki}/server.crt"\nkey_file = "{pki}/server.key"\n',
        )
    gateway = Gateway(workdir, broker.port, config=config, port=gw_port)
    haproxy: HAProxy | None = HAProxy(workdir, direct_port) if shutil.which("haproxy") else None
    children: list[_Child] = [broker, gateway] + ([haproxy] if haproxy else [])
    rates: dict[str, list[float]] = {}
    cpu_us: dict[str, list[float]] = {}
    invalid = 0
    try:
        broker.start()
        if args.tls:
            from tests.servers import wait_port

            wait_port(direct_port)
        gateway.start()
        if haproxy is not None:
            haproxy.start()
            print(f"haproxy: {haproxy_version()}")
        else:
            print("haproxy: not installed, the HAProxy path is skipped (apt-get install haproxy to add it)")
        paths: list[tuple[str, int, dict[str, list[int]]]] = [
            ("direct", direct_port, {"mosquitto": [broker.pid]}),
        ]
        if haproxy is not None:
            paths.append(("haproxy", haproxy.port, {"haproxy": [haproxy.pid], "mosquitto": [broker.pid]}))
        paths.append(("ferryman", gateway.port, {"gateway": [gateway.pid], "mosquitto": [broker.pid]}))
        print(
            f"{args.clients} client processes, {args.seconds:g} s counted per path per rep after "
            f"{WARMUP:g} s warm-up, {args.reps} reps, {'TLS full handshakes, ' if args.tls else ''}"
            f"CONNECT/CONNACK/DISCONNECT/close; gateway /metrics {'off' if args.no_metrics else 'on'}"
        )
        sys.stdout.flush()
        measure(gateway.port, ca_file, 1, 0.5, {})  # first connects: imports, pools, resolver threads
        for rep in range(args.reps):
            for name, port, watch in paths:
                rate, failed, cpu, err = measure(port, ca_file, args.clients, args.seconds, watch)
                rates.setdefault(name, []).append(rate)
                per = []
                for group in watch:
                    us = 1e6 * cpu.get(group, 0.0) / rate if rate else 0.0
                    cpu_us.setdefault(f"{name}:{group}", []).append(us)
                    per.append(f"{group} {cpu.get(group, 0):.2f} cores {us:.0f} us/connect")
                if failed:
                    invalid += 1
                print(
                    f"rep {rep + 1} {name:8s} {rate:8.0f} connects/s"
                    + (f" ({failed} FAILED: {err})" if failed else "")
                    + f"; {'; '.join(per)}; clients {cpu.get('clients', 0):.2f} cores; "
                    + f"others {cpu.get('others', 0):.2f} cores; loadavg {loadavg()}"
                )
                sys.stdout.flush()
    finally:
        for child in reversed(children):
            child.stop()
        tmp.cleanup()

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else 0.0

    tag = "tls_" if args.tls else ""
    figures: list[tuple[str, str]] = []
    for name, rs in rates.items():
        figures.append(
            (f"{tag}{name}_connects_per_s", f"{med(rs):.0f}  ({', '.join(f'{r:.0f}' for r in rs)})")
        )
    direct = rates.get("direct", [])
    for name in ("haproxy", "ferryman"):
        if name in rates:
            ratios = [r / d for r, d in zip(rates[name], direct, strict=True) if d > 0]
            figures.append(
                (
                    f"{tag}{name}_ratio_to_direct",
                    f"{med(ratios):.3f}  ({', '.join(f'{x:.3f}' for x in ratios)})",
                )
            )
    labels = {
        "ferryman:gateway": "gateway_cpu_us_per_connect",
        "ferryman:mosquitto": "mosquitto_cpu_us_per_connect_behind_gateway",
        "direct:mosquitto": "mosquitto_cpu_us_per_connect_direct",
        "haproxy:haproxy": "haproxy_cpu_us_per_connect",
    }
    for key, label in labels.items():
        if key in cpu_us:
            figures.append((f"{tag}{label}", f"{med(cpu_us[key]):.0f}"))
    if "ferryman" in rates:
        us = med(cpu_us.get("ferryman:gateway", []))
        ratio = med([r / d for r, d in zip(rates["ferryman"], direct, strict=True) if d > 0])
        goal = 0.8 if args.tls else 0.5
        figures.append(
            (
                "targets",
                f"ratio >= {goal}: {'met' if ratio >= goal else 'NOT met'} ({ratio:.2f}); "
                f"gateway CPU <= 100 us/connect: {'met' if us <= 100 else 'NOT met'} ({us:.0f})",
            )
        )
    figures.append(("valid", "yes" if not invalid else f"NO ({invalid} windows with failures)"))
    for name, value in figures:
        print(f"{name}: {value}")
    print(f"ended: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; loadavg {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
