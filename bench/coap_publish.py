"""CoAP -> MQTT publish throughput (and aiocoap's own ceiling): CON POSTs through ``ferryman run`` with a
``coap`` listener in publish mode (``target = "mqtt"``) in front of a fresh mosquitto.

    .venv/bin/python bench/coap_publish.py                       # no-op aiocoap ceiling, publish QoS 0 and 1
    .venv/bin/python bench/coap_publish.py --seconds 3 --clients 8 32 --only publish

The load generator is this process: gevent, one UDP socket per client, each client with one CON POST in
flight at a time (a fresh message id and token per request, the same ones again when it retransmits after
2 s). A piggybacked ACK completes a request; an empty ACK means a separate response follows, which is
acknowledged as a client must. coap-client is far too slow to generate load (one process per request).
The ceiling, measured the same way: a bare aiocoap server on its own asyncio loop whose one resource answers
every POST 2.04 at once. Everything listens on 127.0.0.1, on free ports; every process started is stopped by
its PID. Runs are short on purpose: the machine's two cores are shared.
"""

from gevent import monkey

monkey.patch_all()

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import gevent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import PYTHON, process_cpu_ticks, stop_process
from tests.servers import GatewayProcess, Mosquitto, free_port

NOOP_SERVER = """
import asyncio, sys, aiocoap, aiocoap.resource as resource
class Anything(resource.Resource, resource.PathCapable):
    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CHANGED)
async def main():
    await aiocoap.Context.create_server_context(Anything(), bind=("127.0.0.1", int(sys.argv[1])),
                                                transports=["udp6"])
    await asyncio.sleep(3600)
asyncio.run(main())
"""

GATEWAY = """
[metrics]
address = "127.0.0.1:{{metrics_port}}"
[[listener]]
name = "pub"
protocol = "coap"
address = "127.0.0.1:{{port}}"
target = "mqtt"
[auth]
handler = "static"
[[auth.users]]
username = "bench"
password = "bench"
publish = ["bench/#"]
[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "bench-bridge"
"""

CON, NON, ACK, RST = 0, 1, 2, 3


def _option(delta: int, value: bytes) -> bytes:
    def nibble(n: int) -> tuple[int, bytes]:
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes([n - 13])
        return 14, struct.pack("!H", n - 269)

    d, dx = nibble(delta)
    n, nx = nibble(len(value))
    return bytes([(d << 4) | n]) + dx + nx + value


def post(mid: int, token: bytes, path: str, query: list[str], payload: bytes) -> bytes:
    """A CON POST: Uri-Path (11) segments, Uri-Query (15) options, the payload."""
    out = bytearray([0x40 | len(token), 0x02]) + struct.pack("!H", mid) + token
    last = 0
    for number, value in [(11, s.encode()) for s in path.split("/")] + [(15, q.encode()) for q in query]:
        out += _option(number - last, value)
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def _client(
    port: int, path: str, query: list[str], payload: bytes, until: float, counts: Counter[str]
) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(2.0)
    mid = int.from_bytes(os.urandom(2), "big")
    n = 0
    try:
        while time.monotonic() < until:
            mid = (mid + 1) & 0xFFFF
            token = os.urandom(4)
            datagram = post(mid, token, path, query, payload)
            s.send(datagram)
            while True:
                try:
                    data = s.recv(2048)
                except TimeoutError:
                    counts["retransmit"] += 1
                    s.send(datagram)  # same message id: the server must deduplicate it
                    continue
                kind, code, rmid = (data[0] >> 4) & 3, data[1], struct.unpack("!H", data[2:4])[0]
                tkl = data[0] & 0x0F
                if kind == ACK and rmid == mid and code == 0:
                    continue  # empty ACK: a separate response follows
                if kind == CON:
                    s.send(bytes([0x60, 0, data[2], data[3]]))  # ACK the separate response
                if data[4 : 4 + tkl] != token or code == 0:
                    continue
                counts[f"{code >> 5}.{code & 31:02d}"] += 1
                break
            n += 1
    finally:
        s.close()
    return n


def load(
    port: int, path: str, query: list[str], clients: int, seconds: float
) -> tuple[float, float, Counter[str]]:
    """(requests/s, generator cores, response codes) over ``seconds`` with ``clients`` lock-step clients."""
    counts: Counter[str] = Counter()
    start, cpu = time.monotonic(), time.process_time()
    jobs = [
        gevent.spawn(_client, port, path, query, b"21.5", start + seconds, counts) for _ in range(clients)
    ]
    gevent.joinall(jobs, raise_error=True)
    elapsed = time.monotonic() - start
    return sum(j.value for j in jobs) / elapsed, (time.process_time() - cpu) / elapsed, counts


def measure(label: str, port: int, pid: int, query: list[str], clients: list[int], seconds: float) -> None:
    load(port, "bench/coap", query, max(clients), 0.5)  # warm-up: the auth cache, the bridge's session
    for c in clients:
        before = process_cpu_ticks(pid)
        rate, gen_cpu, counts = load(port, "bench/coap", query, c, seconds)
        server_cpu = (process_cpu_ticks(pid) - before) / 100 / seconds
        codes = " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))
        print(
            f"{label:<24} {c:>4} clients {rate:>8.0f} req/s   server {server_cpu:.2f} core  "
            f"generator {gen_cpu:.2f} core   [{codes}]",
            flush=True,
        )


def run_noop(clients: list[int], seconds: float) -> None:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-c", NOOP_SERVER, str(port)])
    try:
        time.sleep(1.5)  # UDP: nothing to connect to; aiocoap starts in well under a second
        measure("no-op aiocoap", port, proc.pid, [], clients, seconds)
    finally:
        stop_process(proc)


def run_publish(clients: list[int], seconds: float, qos_levels: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="coap-bench-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "mosquitto", extra="persistence false\n") as broker:
            gw = GatewayProcess(work / "gw", textwrap.dedent(GATEWAY).format(broker=broker.port))
            gw.ports = [gw.metrics_port]  # start() waits for TCP ports: the metrics one comes up last
            gw.start()
            try:
                assert gw.proc is not None
                for qos in qos_levels:
                    query = ["auth=bench:bench", f"qos={qos}"]
                    measure(f"publish QoS {qos}", gw.port, gw.proc.pid, query, clients, seconds)
            finally:
                rc, err = gw.stop()
                if rc != 0:
                    print(f"gateway exited {rc}:\n{err[-2000:]}", file=sys.stderr)


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window per run (default 3)")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32], help="default: 8 32")
    parser.add_argument("--qos", type=int, nargs="+", default=[0, 1], choices=[0, 1, 2])
    parser.add_argument("--only", choices=["noop", "publish"], help="one part only")
    args = parser.parse_args()
    if args.only in (None, "noop"):
        run_noop(args.clients, args.seconds)
    if args.only in (None, "publish"):
        run_publish(args.clients, args.seconds, args.qos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
