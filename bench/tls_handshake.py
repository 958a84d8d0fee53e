"""New TLS connections per second: mosquitto's own TLS listener (direct) against the gateway's TLS, mTLS
and mTLS + OCSP + CRL listeners, measured side by side in one run.

    .venv/bin/python bench/tls_handshake.py [--seconds N] [--reps N] [--clients N] [--max N]

One connection = TCP connect, a full TLS handshake (no session resumption), MQTT 3.1.1 CONNECT, CONNACK,
close. ``--clients`` processes (default 2) open connections back to back for ``--seconds`` per run (at most
``--max`` connections per run). Every rep runs the four paths in turn on the same mosquitto and the same
gateway process (listeners: tls, mtls, mtls with verify = ["ocsp", "crl"]). The revocation path runs with a
warm cache: the OCSP answer and the CRL are fetched once (from ``ferryman responder``) before measuring and
stay valid for an hour, so the figure is the cost of the check's cache lookup, not of the responder.
The last lines are the median over the reps of each path's rate divided by the direct path's rate.
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
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    PASSWORD,
    PYTHON,
    USERNAME,
    Gateway,
    Mosquitto,
    connect_packet,
    free_port,
    machine_line,
    stop_process,
    wait_port,
)

PATHS = ("direct tls", "gateway tls", "gateway mtls", "gateway mtls+ocsp+crl")


def _nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def client_main(port: int, pki: str, mutual: bool, seconds: float, limit: int, conn: Connection) -> None:
    ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    if mutual:
        ctx.load_cert_chain(f"{pki}/client.crt", f"{pki}/client.key")
    done = failed = 0
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < deadline and done < limit:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                ctx.wrap_socket(_nodelay(raw), server_hostname="localhost") as tls,
            ):
                tls.sendall(connect_packet(f"hs-{port}-{done}", USERNAME, PASSWORD))
                connack = tls.recv(4)
                if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
                    raise ConnectionError(f"CONNACK {connack.hex()}")
            done += 1
        except (OSError, ConnectionError):
            failed += 1
            if failed > 20:
                break
    conn.send((done, failed, time.monotonic() - t0))


def measure(port: int, pki: str, mutual: bool, clients: int, seconds: float, limit: int) -> tuple[float, int]:
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for _ in range(clients):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=client_main, args=(port, pki, mutual, seconds, limit // clients, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    results = [p.recv() for p in pipes]
    for proc in procs:
        proc.join(10)
    done = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    return done / elapsed, failed


def gateway_config(pki: Path, ports: list[int], broker: int, responder: int) -> str:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="per path per rep (default 3)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--max", type=int, default=20_000, help="connections per run at most")
    ap.add_argument("--workdir", help="keep configs and logs here (default: a temporary directory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferryman-tls-bench-") as tmp:
        work = Path(args.workdir or tmp)
        pki = work / "pki"
        rport = free_port()
        base = f"http://127.0.0.1:{rport}"
        subprocess.run(
            [PYTHON, "-m", "ferryman", "certs", str(pki), "--force", "--ocsp-url", f"{base}/ocsp",
             "--crl-url", f"{base}/crl.pem"],
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
        tls_port = free_port()
        broker.extra = (
            "set_tcp_nodelay true\n"
            + f"listener {tls_port} 127.0.0.1\ncertfile {pki}/server.crt\nkeyfile {broker_key}\n"
        )
        ports = [free_port() for _ in range(3)]
        try:
            wait_port(rport, proc=responder)
            broker.start()
            wait_port(tls_port)
            gateway = Gateway(work, broker.port, port=ports[0])
            gateway.config = gateway_config(pki, ports, broker.port, rport)
            with gateway:
                for p in ports[1:]:
                    wait_port(p)
                targets = [(tls_port, False), (ports[0], False), (ports[1], True), (ports[2], True)]
                measure(ports[2], str(pki), True, 1, 1.0, 3)  # warm the revocation cache
                print(machine_line())
                print(
                    f"{args.clients} client processes, {args.seconds:g} s per path, {args.reps} reps, "
                    "full handshakes, CONNECT/CONNACK then close"
                )
                rates: dict[str, list[float]] = {p: [] for p in PATHS}
                for rep in range(args.reps):
                    line = []
                    for path, (port, mutual) in zip(PATHS, targets, strict=True):
                        rate, failed = measure(port, str(pki), mutual, args.clients, args.seconds, args.max)
                        rates[path].append(rate)
                        line.append(f"{path} {rate:7.1f}/s" + (f" ({failed} failed)" if failed else ""))
                    print(f"rep {rep + 1}: " + " | ".join(line))
                print("median connections/s and ratio to direct (median of per-rep ratios):")
                direct = rates[PATHS[0]]
                for path in PATHS:
                    ratios = [r / d for r, d in zip(rates[path], direct, strict=True) if d > 0]
                    print(
                        f"  {path:24s} {statistics.median(rates[path]):8.1f}/s  "
                        f"ratio {statistics.median(ratios) if ratios else 0.0:.2f}"
                    )
        finally:
            broker.stop()
            stop_process(responder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
