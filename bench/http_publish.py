"""HTTP publish-mode throughput (and its ceilings): keep-alive POSTs through ``ferryman run`` with an
``http`` listener in publish mode (``target = "mqtt"``) in front of a fresh mosquitto.

    .venv/bin/python bench/http_publish.py                      # noop ceilings, publish QoS 0 and QoS 1
    .venv/bin/python bench/http_publish.py --seconds 3 --connections 8 16 32 --only publish

The load generator is this process: gevent, one raw keep-alive socket per connection, one pre-encoded
request written and one response read per round (no pipelining), counting status codes. It costs about
0.15 core at 5,000 req/s, so on a 2-core machine the gateway has one core to itself. Ceilings, measured the
same way: a stock gevent pywsgi server with a no-op WSGI app, and the same no-op app behind the listener's
own pywsgi handler (``protocols/http/server.py``: faster header reader, no access log, one send per
response). Everything listens on 127.0.0.1, on free ports; every process started is stopped by its PID.
"""

from gevent import monkey

monkey.patch_all()

import argparse
import base64
import socket
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
from tests.servers import GatewayProcess, Mosquitto, free_port, wait_port

NOOP_SERVER = """
from gevent import monkey; monkey.patch_all()
import socket, sys
from gevent.pywsgi import WSGIServer
def app(env, start_response):
    env["wsgi.input"].read()
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
tuned = sys.argv[2] == "tuned"
if tuned:
    from ferryman.protocols.http.server import HttpConnection
class Server(WSGIServer):
    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tuned:
            HttpConnection(sock, address, self).handle()
        else:
            super().handle(sock, address)
Server(("127.0.0.1", int(sys.argv[1])), app, log=None, error_log=None,
       environ={"SERVER_NAME": "127.0.0.1"}).serve_forever()
"""

GATEWAY = """
[metrics]
address = ""
[[listener]]
name = "pub"
protocol = "http"
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


def request(qos: int, payload: bytes = b"x" * 32) -> bytes:
    auth = base64.b64encode(b"bench:bench").decode()
    head = (
        f"POST /bench/http HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
        f"X-MQTT-QoS: {qos}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def _client(port: int, req: bytes, until: float, counts: Counter[bytes]) -> int:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n, buf = 0, b""
    try:
        while time.monotonic() < until:
            s.sendall(req)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    at = buf.find(b"Content-Length: ", 0, end)
                    length = int(buf[at + 16 : buf.find(b"\r\n", at)]) if at >= 0 else 0
                    if len(buf) >= end + 4 + length:
                        counts[buf[9:12]] += 1
                        buf = buf[end + 4 + length :]
                        break
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                buf += data
            n += 1
    finally:
        s.close()
    return n


def load(port: int, req: bytes, connections: int, seconds: float) -> tuple[float, float, Counter[bytes]]:
    """(requests/s, generator cores, status counts) over ``seconds``, ``connections`` keep-alive clients."""
    counts: Counter[bytes] = Counter()
    start, cpu = time.monotonic(), time.process_time()
    jobs = [gevent.spawn(_client, port, req, start + seconds, counts) for _ in range(connections)]
    gevent.joinall(jobs, raise_error=True)
    elapsed = time.monotonic() - start
    return sum(j.value for j in jobs) / elapsed, (time.process_time() - cpu) / elapsed, counts


def measure(label: str, port: int, pid: int, req: bytes, conns: list[int], seconds: float) -> None:
    load(port, req, max(conns), 0.5)  # warm-up: connections, caches, the bridge's session
    for c in conns:
        before = process_cpu_ticks(pid)
        rate, gen_cpu, counts = load(port, req, c, seconds)
        server_cpu = (process_cpu_ticks(pid) - before) / 100 / seconds
        codes = " ".join(f"{k.decode()}:{v}" for k, v in sorted(counts.items()))
        print(
            f"{label:<24} {c:>4} conns  {rate:>8.0f} req/s   server {server_cpu:.2f} core  "
            f"generator {gen_cpu:.2f} core   [{codes}]",
            flush=True,
        )


def run_noop(kind: str, conns: list[int], seconds: float) -> None:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-c", NOOP_SERVER, str(port), kind])
    try:
        wait_port(port, proc=proc)
        measure(f"no-op pywsgi ({kind})", port, proc.pid, request(1), conns, seconds)
    finally:
        stop_process(proc)


def run_publish(conns: list[int], seconds: float, qos_levels: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "mosquitto", extra="persistence false\n") as broker:
            gw = GatewayProcess(work / "gw", textwrap.dedent(GATEWAY).format(broker=broker.port))
            gw.start()
            try:
                assert gw.proc is not None
                for qos in qos_levels:
                    measure(f"publish QoS {qos}", gw.port, gw.proc.pid, request(qos), conns, seconds)
            finally:
                rc, err = gw.stop()
                if rc != 0:
                    print(f"gateway exited {rc}:\n{err[-2000:]}", file=sys.stderr)


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window per run (default 3)")
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32], help="default: 8 32")
    parser.add_argument("--qos", type=int, nargs="+", default=[0, 1], choices=[0, 1, 2])
    parser.add_argument("--only", choices=["noop", "publish"], help="one part only")
    args = parser.parse_args()
    if args.only in (None, "noop"):
        run_noop("stock", args.connections, args.seconds)
        run_noop("tuned", args.connections, args.seconds)
    if args.only in (None, "publish"):
        run_publish(args.connections, args.seconds, args.qos)
    return 0


if __name__ == "__main__":
    sys.exit(main())
