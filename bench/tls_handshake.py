"""New TLS connections per second, mosquitto's own TLS listeners (direct) against the gateway's TLS, mTLS and
mTLS + OCSP + CRL listeners, with full and with resumed handshakes, for RSA and EC certificates; every path
measured side by side in one run, with the CPU each server spends per connection.

    .venv/bin/python bench/tls_handshake.py [--key-types rsa,ec] [--modes full,resumed] [--seconds 2]
                                            [--reps 3] [--clients 2] [--max N] [--workdir DIR]

One connection = TCP connect, a TLS handshake, MQTT 3.1.1 CONNECT (user ``bench``), CONNACK (must be
``20 02 00 00``), DISCONNECT, close. ``full``: no session offered, a full handshake every time. ``resumed``:
each client offers the session (ticket) of its previous connection; the share of connections that did
resume is printed (``reused``). ``--clients`` forked processes loop over that as fast as they can for a
0.5 s warm-up plus ``--seconds``; connects completed inside the window are counted. Sockets are bound to
127.0.0.2..9 in turn so TIME_WAIT never runs out of ports.

Per key type (``ferryman certs --key-type``, one PKI: CA, server and client keys of that type), one
mosquitto and one gateway serve every path of every rep:

- ``direct tls`` / ``direct mtls``: mosquitto's TLS listener, and one with ``require_certificate true``
  (it checks no password, no revocation);
- ``gateway tls`` / ``gateway mtls`` / ``gateway mtls+ocsp+crl``: the gateway's listeners with the same
  certificate (the ``static`` handler checks the password), proxying to mosquitto's plain listener. The
  revocation path has a warm cache: the OCSP answer and the CRL (from ``ferryman responder``) are fetched
  before measuring and stay valid for an hour, so it measures the cache lookup, not the responder.

CPU per connect is utime + stime of the server over the window (/proc) divided by the connects counted:
the steady figure on a busy machine (the rates also depend on the clients, which share the cores). The
last lines are ``name: value`` figures: median rate per path, the median per-rep ratio of each gateway
path to ``direct tls`` (mTLS paths: also to ``direct mtls``), revocation over plain mTLS, and CPU per
connect.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    DISCONNECT_PACKET,
    PASSWORD,
    PYTHON,
    USERNAME,
    CpuMeter,
    Gateway,
    Mosquitto,
    connect_packet,
    free_port,
    machine_line,
    stop_process,
    wait_port,
    wait_until,
)

CONNACK_OK = b"\x20\x02\x00\x00"
WARMUP = 0.5
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_FAILURES = 20
PATHS = ("direct tls", "direct mtls", "gateway tls", "gateway mtls", "gateway mtls+ocsp+crl")


@dataclass(frozen=True)
class Route:
    name: str
    port: int
    mutual: bool
    server: str  # "mosquitto" | "gateway": whose CPU is the path's cost


def client_main(
    idx: int,
    port: int,
    pki: str,
    mutual: bool,
    resume: bool,
    times: tuple[float, float, float],
    limit: int,
    conn: Connection,
) -> None:
    """Connect, handshake, CONNECT, CONNACK, DISCONNECT, close, until the window ends. Sends (counted,
    resumed among them, failures, first failure)."""
    start_at, win_start, win_end = times
    ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    if mutual:
        ctx.load_cert_chain(f"{pki}/client.crt", f"{pki}/client.key")
    marker = b"#" * 9
    packet = connect_packet(f"hs{idx}-{port}-" + "#" * 9)  # a unique client id per connect: no takeovers
    at = packet.index(marker)
    head, tail = packet[:at], packet[at + 9 :]
    sources = SOURCES[idx % len(SOURCES) :] + SOURCES[: idx % len(SOURCES)]
    session: ssl.SSLSession | None = None
    n = counted = reused = failed = 0
    first_error = ""
    wait_until(start_at)
    while counted < limit:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ok = was_reused = False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((sources[n & 7], 0))
            sock.settimeout(10.0)
            sock.connect(("127.0.0.1", port))
            tls = ctx.wrap_socket(sock, server_hostname="localhost", session=session if resume else None)
            tls.sendall(head + b"%09d" % n + tail)
            data = b""
            while len(data) < 4:
                more = tls.recv(4 - len(data))
                if not more:
                    break
                data += more
            if data != CONNACK_OK:
                raise ConnectionError(f"CONNACK {data.hex(' ') or '(closed)'}")
            was_reused = bool(tls.session_reused)
            if resume:
                session = tls.session
            tls.sendall(DISCONNECT_PACKET)
            tls.close()
            ok = True
        except (OSError, ConnectionError) as exc:
            failed += 1
            first_error = first_error or repr(exc)
        finally:
            sock.close()
        n += 1
        now = time.monotonic()
        if ok and win_start <= now < win_end:
            counted += 1
            reused += was_reused
        if now >= win_end or failed > MAX_FAILURES:
            break
    conn.send((counted, reused, failed, first_error))


def measure(
    path: Route, pki: str, resume: bool, clients: int, seconds: float, limit: int, pids: dict[str, int]
) -> tuple[float, float, float, float, int, str]:
    """One window: (connects/s, share resumed, server CPU us per connect, cores used by everything else
    on the machine, failures, first failure)."""
    ctx = mp.get_context("fork")
    start_at = time.monotonic() + 0.3
    times = (start_at, start_at + WARMUP, start_at + WARMUP + seconds)
    pipes, procs = [], []
    for i in range(clients):
        parent, child = ctx.Pipe(duplex=False)
        args = (i, path.port, pki, path.mutual, resume, times, limit // clients, child)
        proc = ctx.Process(target=client_main, args=args)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    meter = CpuMeter({"server": [pids[path.server]], "clients": [p.pid for p in procs if p.pid is not None]})
    wait_until(times[1])
    meter.start()
    wait_until(times[2])
    cpu = meter.stop()
    results = [p.recv() for p in pipes if p.poll(30)]
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    counted = sum(r[0] for r in results)
    reused = sum(r[1] for r in results)
    failed = sum(r[2] for r in results) + clients - len(results)
    errors = [r[3] for r in results if r[3]]
    rate = counted / seconds
    us = 1e6 * cpu.get("server", 0.0) / rate if rate else 0.0
    share = reused / counted if counted else 0.0
    return rate, share, us, cpu.get("others", 0.0), failed, errors[0] if errors else ""


def gateway_config(pki: Path, ports: list[int], broker: int) -> str:
    def listener(name: str, port: int, extra: str) -> str:
        return f"""
[[listener]]
name = "{name}"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
{extra}"""

    mtls = f'client_ca_file = "{pki}/ca.crt"'
    revocation = f'{mtls}\nverify = ["ocsp", "crl"]'
    return (
        f'[log]\nlevel = "warning"\n[metrics]\naddress = ""\n[auth]\nhandler = "static"\n'
        f'[[auth.users]]\nusername = "{USERNAME}"\npassword = "{PASSWORD}"\npublish = ["bench/#"]\n'
        + listener("tls", ports[0], "")
        + listener("mtls", ports[1], mtls)
        + listener("mtls-revocation", ports[2], revocation)
    )


def run_key_type(key_type: str, args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    """Every rep of every mode and path for one key type; returns the figures by name."""
    work.mkdir(parents=True, exist_ok=True)
    pki = work / "pki"
    rport = free_port()
    base = f"http://127.0.0.1:{rport}"
    subprocess.run(
        [PYTHON, "-m", "ferryman", "certs", str(pki), "--force", "--key-type", key_type,
         "--ocsp-url", f"{base}/ocsp", "--crl-url", f"{base}/crl.pem"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    responder = subprocess.Popen(
        [PYTHON, "-m", "ferryman", "responder", str(pki), "--address", f"127.0.0.1:{rport}"],
        stderr=subprocess.DEVNULL,
    )
    # mosquitto started as root drops to its own user: give it a readable copy of the server key
    broker_key = work / "broker-server.key"
    broker_key.write_bytes((pki / "server.key").read_bytes())
    broker_key.chmod(0o644)
    for d in (work, pki):
        d.chmod(0o755)
    broker = Mosquitto(work)
    tls_port, mtls_port = free_port(), free_port()
    tls_files = f"certfile {pki}/server.crt\nkeyfile {broker_key}\n"
    broker.extra = (
        "set_tcp_nodelay true\nmax_connections -1\n"
        + f"listener {tls_port} 127.0.0.1\n{tls_files}"
        + f"listener {mtls_port} 127.0.0.1\n{tls_files}cafile {pki}/ca.crt\nrequire_certificate true\n"
    )
    ports = [free_port() for _ in range(3)]
    figures: dict[str, list[float]] = {}
    try:
        wait_port(rport, proc=responder)
        broker.start()
        wait_port(tls_port)
        wait_port(mtls_port)
        gateway = Gateway(work, broker.port, port=ports[0])
        gateway.config = gateway_config(pki, ports, broker.port)
        with gateway:
            for p in ports[1:]:
                wait_port(p)
            assert broker.proc is not None and gateway.proc is not None
            pids = {"mosquitto": broker.proc.pid, "gateway": gateway.proc.pid}
            paths = [
                Route("direct tls", tls_port, False, "mosquitto"),
                Route("direct mtls", mtls_port, True, "mosquitto"),
                Route("gateway tls", ports[0], False, "gateway"),
                Route("gateway mtls", ports[1], True, "gateway"),
                Route("gateway mtls+ocsp+crl", ports[2], True, "gateway"),
            ]
            # first connects: imports, pools; and the revocation cache warmed (OCSP answer and CRL)
            for path in paths[2:]:
                measure(path, str(pki), False, 1, 0.3, 5, pids)
            for rep in range(args.reps):
                for mode in args.modes:
                    for path in paths:
                        rate, share, us, others, failed, err = measure(
                            path, str(pki), mode == "resumed", args.clients, args.seconds, args.max, pids
                        )
                        key = f"{key_type} {mode} {path.name}"
                        figures.setdefault(f"{key}|rate", []).append(rate)
                        figures.setdefault(f"{key}|us", []).append(us)
                        print(
                            f"{key_type} rep {rep + 1} {mode:7s} {path.name:22s} {rate:7.1f}/s "
                            f"{path.server} {us:6.0f} us/connect"
                            + (f" reused {share:.0%}" if mode == "resumed" else "")
                            + f"; others {others:.2f} cores"
                            + (f" ({failed} FAILED: {err})" if failed else "")
                        )
                        sys.stdout.flush()
    finally:
        broker.stop()
        stop_process(responder)
    return figures


def summary(figures: dict[str, list[float]], key_types: list[str], modes: list[str]) -> list[str]:
    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else 0.0

    def ratios(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(figures[a], figures[b], strict=True) if y > 0]

    lines = []
    for kt in key_types:
        for mode in modes:
            prefix = f"{kt} {mode}"
            for path in PATHS:
                key = f"{prefix} {path}"
                if f"{key}|rate" not in figures:
                    continue
                line = (
                    f"{kt}_{mode}_{path.replace(' ', '_')}: {med(figures[f'{key}|rate']):.0f}/s, "
                    f"{med(figures[f'{key}|us']):.0f} us/connect"
                )
                if path.startswith("gateway"):
                    direct = f"{prefix} direct tls|rate"
                    line += f"; ratio to direct tls {med(ratios(f'{key}|rate', direct)):.2f}"
                    if "mtls" in path:
                        direct_mtls = f"{prefix} direct mtls|rate"
                        line += f", to direct mtls {med(ratios(f'{key}|rate', direct_mtls)):.2f}"
                    if path == "gateway mtls+ocsp+crl":
                        plain = f"{prefix} gateway mtls"
                        line += (
                            f", to gateway mtls {med(ratios(f'{key}|rate', f'{plain}|rate')):.2f} "
                            f"(CPU {med(ratios(f'{key}|us', f'{plain}|us')):.2f}x)"
                        )
                lines.append(line)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--key-types", default="rsa,ec", help="comma-separated: rsa, ec (default both)")
    ap.add_argument("--modes", default="full,resumed", help="comma-separated: full, resumed (default both)")
    ap.add_argument("--seconds", type=float, default=2.0, help="counted window per path (default 2)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--max", type=int, default=20_000, help="connections per window at most")
    ap.add_argument("--workdir", help="keep configs and logs here (default: a temporary directory)")
    args = ap.parse_args()
    key_types = [k for k in args.key_types.split(",") if k]
    args.modes = [m for m in args.modes.split(",") if m]
    if not set(key_types) <= {"rsa", "ec"} or not set(args.modes) <= {"full", "resumed"}:
        ap.error("--key-types takes rsa, ec; --modes takes full, resumed")
    print(machine_line())
    print(
        f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {args.clients} client processes, "
        f"{WARMUP:g} s warm-up + {args.seconds:g} s per path, {args.reps} reps; "
        "TLS handshake, CONNECT/CONNACK/DISCONNECT, close"
    )
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ferryman-tls-bench-") as tmp:
        Path(tmp).chmod(0o755)  # mosquitto, started as root, reads its files as its own user
        for key_type in key_types:
            figures.update(run_key_type(key_type, args, Path(args.workdir or tmp) / key_type))
    print("median over the reps; ratios are medians of per-rep ratios:")
    for line in summary(figures, key_types, args.modes):
        print(line)
    print(f"ended {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
