"""CoAP proxy-mode throughput: requests/s through ``ferryman run`` with a ``coap`` listener in front of the
aiocoap target of ``tests/coap_support.py``, divided by requests/s sent straight to that same target, both
measured in one run, alternately.

    .venv/bin/python bench/coap_proxy.py                         # 3 s per round, 2 rounds, 64 in flight
    .venv/bin/python bench/coap_proxy.py --seconds 2 --window 32 128 --method get
    .venv/bin/python bench/coap_proxy.py --slow                  # the aiocoap path only (no fast path)

The load generator is this process: one UDP socket per window, requests built once by aiocoap's encoder
and sent with a fresh message id and token each (a raw generator: coap-client manages a few hundred
requests/s), ``window`` CON requests in flight, a lost one replaced after 0.5 s of silence. The target and
the gateway each run in their own process; every process started here is stopped by its PID and
everything listens on 127.0.0.1. The proxy's requests carry ``?auth=bench:bench`` (the ``static`` handler;
the decision is cached per peer, so the steady state measures forwarding, not the handler chain).
"""

from gevent import monkey

monkey.patch_all()

import argparse
import os
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiocoap import Message
from aiocoap.numbers.codes import Code

from bench._harness import stop_process
from tests.coap_support import CoapTarget, RawCoap, free_udp_port
from tests.servers import GatewayProcess

GATEWAY = """
[log]
level = "warning"
[metrics]
address = "127.0.0.1:{{port}}"
[[listener]]
name = "proxy"
protocol = "coap"
address = "127.0.0.1:{coap}"
target = "coap://127.0.0.1:{target}"
[auth]
handler = "static"
[[auth.users]]
username = "bench"
password = "bench"
publish = ["bench/#"]
subscribe = ["bench/#"]
"""


def template(method: str, auth: bool) -> bytes:
    """One encoded CON request; bytes 2-3 (message id) and 4-7 (token) are patched per send."""
    code = Code.POST if method == "post" else Code.GET
    msg = Message(code=code, payload=b"x" * 32 if code == Code.POST else b"")
    msg.mtype, msg.mid, msg.token = 0, 0, b"\0\0\0\0"
    msg.opt.uri_path = ("bench", "value")
    if auth:
        msg.opt.uri_query = ("auth=bench:bench",)
    if code == Code.POST:
        msg.opt.content_format = 0
    return bytes(msg.encode())


def run_load(port: int, request: bytes, window: int, seconds: float) -> tuple[float, int, int]:
    """(responses/s, responses, requests re-sent after a loss) with ``window`` CON requests in flight."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    head, tail = request[:2], request[8:]
    counter = int.from_bytes(os.urandom(2), "big")
    pack = struct.Struct("!HI").pack

    def send() -> None:
        nonlocal counter
        counter += 1
        sock.send(head + pack(counter & 0xFFFF, counter & 0xFFFFFFFF) + tail)

    for _ in range(window):
        send()
    done = lost = 0
    start = time.perf_counter()
    deadline = start + seconds
    sock.settimeout(0.5)
    while True:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            lost += window  # refill: whatever was in flight is presumed lost
            for _ in range(window):
                send()
            continue
        if len(data) >= 4 and data[1] != 0:  # a response (an empty ACK has code 0.00)
            done += 1
            if time.perf_counter() >= deadline:
                break
            send()
    elapsed = time.perf_counter() - start
    sock.close()
    return done / elapsed, done, lost


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=int, nargs="+", default=[64])
    parser.add_argument("--method", choices=["get", "post"], default="post")
    parser.add_argument(
        "--slow", action="store_true", help="turn the proxy's fast path off (COAP_PROXY_SLOW_LISTENERS)"
    )
    args = parser.parse_args()

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"ferryman-bench-coap-{os.getpid()}"
    with CoapTarget() as target:
        coap = free_udp_port()
        env = {"COAP_PROXY_SLOW_LISTENERS": "proxy"} if args.slow else {}
        gateway = GatewayProcess(workdir, GATEWAY.format(coap=coap, target=target.port), env=env)
        gateway.start()
        try:
            with RawCoap(coap) as c:  # warm-up: resolves the target, caches the credentials
                for _ in range(20):
                    c.request(Code.GET, "bench/value?auth=bench:bench")
            heads = ("window", "round", "direct req/s", "proxy req/s", "ratio", "lost")
            print(" ".join(f"{h:>{w}}" for h, w in zip(heads, (6, 5, 13, 12, 6, 5), strict=True)))
            for window in args.window:
                ratios = []
                for r in range(args.rounds):
                    direct, _, lost_d = run_load(
                        target.port, template(args.method, False), window, args.seconds
                    )
                    proxy, _, lost_p = run_load(coap, template(args.method, True), window, args.seconds)
                    ratios.append(proxy / direct)
                    print(
                        f"{window:>6} {r + 1:>5} {direct:>13,.0f} {proxy:>12,.0f} {proxy / direct:>6.2f} "
                        f"{lost_d + lost_p:>5}"
                    )
                print(f"{window:>6} {'mean':>5} {'':>13} {'':>12} {sum(ratios) / len(ratios):>6.2f}")
        finally:
            stop_process(gateway.proc)
            gateway.proc = None


if __name__ == "__main__":
    main()
