"""MQTT-over-WebSocket throughput: the same QoS 0 load sent to mosquitto's own websockets listener and
through ferryman's mqtt-ws listener in front of that same listener, side by side in one run.

    .venv/bin/python bench/ws_throughput.py [--seconds N] [--warmup N] [--reps N] [--publishers N]
                                            [--payload BYTES] [--upstream ws|tcp]

Each repetition starts a fresh mosquitto (a plain listener and a websockets listener) and runs the load
twice: direct (to the websockets listener), then through the gateway (one gateway process for the whole
benchmark, static handler checking every PUBLISH against its ACL). The load: publisher processes, each a
raw socket that does the WebSocket upgrade (subprotocol "mqtt"), CONNECT, and then writes pre-encoded
batches of masked binary frames, one QoS 0 PUBLISH per frame and a new masking key per frame, as browser
and paho clients send them (32-byte payload, topic ``bench/p<i>``), as fast as TCP takes them; one
subscriber on ``bench/#`` over the same path strips the frames and counts PUBLISH packets. The last line
is the median of the per-rep ratios gateway / direct of the subscriber's received messages per second.
Target: >= 0.8.

The gateway's target is mosquitto's websockets listener (``ws://``, the default), so that mosquitto does
the same work in both runs and the ratio is the gateway's own cost. ``--upstream tcp`` targets mosquitto's
plain listener instead; mosquitto 2.0's TCP listener costs it several system calls per message (it reads
each fixed header a byte at a time, and switches EPOLLOUT on and off per write), about 2.5x its websockets
listener's cost, so that ratio measures mosquitto's two listeners more than the gateway (bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    USERNAME,
    Gateway,
    Mosquitto,
    PacketCounter,
    SendFailed,
    Snapshot,
    Window,
    connect_packet,
    free_port,
    gateway_config,
    machine_line,
    process_cpu_ticks,
    publish_packet,
    rate,
    recv_report,
    send_window,
    subscribe_packet,
    wait_until,
)

PAYLOAD_SIZE = 32
BATCH_BYTES = 256 * 1024
PATH = "/mqtt"
BATCH_KEYS = 4096  # masking keys drawn per publisher: frame i of a batch uses key i % BATCH_KEYS


# ------------------------------------------------------------------------------------------ WebSocket bytes


def masked_frame(payload: bytes, key: bytes | None = None) -> bytes:
    """One final binary frame from a client (masked, as RFC 6455 requires), payload under 64 KiB; the
    masking key is a new random one unless given."""
    key = key or os.urandom(4)
    n = len(payload)
    head = bytes((0x82, 0x80 | n)) if n < 126 else bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big")
    keys = (key * (n // 4 + 1))[:n]
    return head + key + bytes(a ^ b for a, b in zip(payload, keys, strict=True))


class Unframer:
    """Strips the (unmasked) frames a server sends and hands their payload bytes on."""

    def __init__(self) -> None:
        self.pending = b""
        self.left = 0  # payload bytes of the current frame not seen yet

    def feed(self, data: bytes) -> bytes:
        buf = self.pending + data if self.pending else data
        out: list[bytes] = []
        pos, n = 0, len(buf)
        if self.left:
            take = min(self.left, n)
            out.append(buf[:take])
            self.left -= take
            pos = take
        while pos + 2 <= n:
            length, head = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if pos + 4 > n:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if pos + 10 > n:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            start = pos + head
            take = min(length, n - start)
            if buf[pos] & 0x0F in (0, 2):
                out.append(buf[start : start + take])
            elif take < length:
                break  # a control frame: wait for all of it
            pos = start + take
            if take < length:
                self.left = length - take
        self.pending = buf[pos:] if pos < n else b""
        return b"".join(out)


def ws_open(port: int, client_id: str) -> tuple[socket.socket, Unframer, bytes]:
    """Upgrade, CONNECT, wait for CONNACK. Returns the socket, its unframer and MQTT bytes after CONNACK."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the WebSocket upgrade")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0]
    if b" 101 " not in status:
        raise ConnectionError(f"upgrade refused: {status!r}")
    unframer = Unframer()
    sock.sendall(masked_frame(connect_packet(client_id, USERNAME, USERNAME)))
    mqtt = unframer.feed(rest)
    while len(mqtt) < 4:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before CONNACK")
        mqtt += unframer.feed(chunk)
    if mqtt[0] != 0x20 or mqtt[3] != 0:
        raise ConnectionError(f"CONNECT refused: {mqtt[:4].hex()}")
    return sock, unframer, mqtt[4:]


# ------------------------------------------------------------------------------------------------ children


def publisher_main(port: int, index: int, conn: Connection, payload_size: int = PAYLOAD_SIZE) -> None:
    try:
        sock, _, _ = ws_open(port, f"bench-ws-pub-{index}-{os.getpid()}")
    except Exception as exc:
        conn.send(("error", f"publisher {index}: {exc!r}"))
        return
    packet = publish_packet(f"bench/p{index}", bytes(payload_size))
    size = len(masked_frame(packet))
    per_batch = max(1, BATCH_BYTES // size)
    keys = [os.urandom(4) for _ in range(min(per_batch, BATCH_KEYS))]
    batch = b"".join(masked_frame(packet, keys[i % len(keys)]) for i in range(per_batch))
    conn.send(("ready", size))
    window: Window = conn.recv()
    try:
        first, last, sent = send_window(sock, batch, per_batch, window)
    except SendFailed as exc:
        conn.send(("error", f"publisher {index}: {exc}"))
        return
    finally:
        sock.close()
    conn.send(("done", first, last, sent))


def subscriber_main(port: int, conn: Connection) -> None:
    try:
        sock, unframer, rest = ws_open(port, f"bench-ws-sub-{os.getpid()}")
        sock.sendall(masked_frame(subscribe_packet(1, "bench/#")))
        mqtt = rest
        while len(mqtt) < 5:
            mqtt += unframer.feed(sock.recv(65536))
        if mqtt[0] != 0x90 or mqtt[4] > 2:
            raise ConnectionError(f"SUBSCRIBE refused: {mqtt[:5].hex()}")
    except Exception as exc:
        conn.send(("error", f"subscriber: {exc!r}"))
        return
    counter = PacketCounter()
    counter.feed(mqtt[5:])
    conn.send(("ready", 0))
    window: Window = conn.recv()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 64 * 1024)  # wake up for a chunk, not a frame
    sock.settimeout(0.05)
    first: Snapshot | None = None
    last: Snapshot | None = None
    try:
        while True:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                pass
            else:
                if not data:
                    raise ConnectionError("connection closed by the server")
                counter.feed(unframer.feed(data))
            now = time.monotonic()
            if first is None and now >= window.win_start:
                first = (now, counter.publishes)
            if now >= window.win_end:
                last = (now, counter.publishes)
                break
    except (OSError, ValueError) as exc:
        conn.send(("error", f"subscriber: {exc!r} after {counter.publishes} messages"))
        return
    finally:
        sock.close()
    conn.send(("done", first, last, counter.publishes))


# -------------------------------------------------------------------------------------------- one load run


@dataclass(frozen=True)
class RunResult:
    received_per_s: float
    sent_per_s: float
    cpu: dict[str, float]  # cores busy during the window, per watched process


def run_load(
    port: int,
    seconds: float,
    warmup: float,
    publishers: int,
    watch: dict[str, int],
    payload_size: int = PAYLOAD_SIZE,
) -> RunResult:
    ctx = mp.get_context("fork")
    procs: list[Any] = []
    conns: list[tuple[str, Connection]] = []
    try:
        parent, child = ctx.Pipe()
        procs.append(ctx.Process(target=subscriber_main, args=(port, child), daemon=True))
        procs[-1].start()
        conns.append(("subscriber", parent))
        recv_report(parent, time.monotonic() + 15, "subscriber")
        for i in range(publishers):
            parent, child = ctx.Pipe()
            procs.append(ctx.Process(target=publisher_main, args=(port, i, child, payload_size), daemon=True))
            procs[-1].start()
            conns.append((f"publisher {i}", parent))
        for who, c in conns[1:]:
            recv_report(c, time.monotonic() + 15, who)
        start_at = time.monotonic() + 0.2
        window = Window(start_at, start_at + warmup, start_at + warmup + seconds)
        for _, c in conns:
            c.send(window)
        wait_until(window.win_start)
        ticks0 = {name: process_cpu_ticks(pid) for name, pid in watch.items()}
        t0 = time.monotonic()
        wait_until(window.win_end)
        elapsed = time.monotonic() - t0
        hz = os.sysconf("SC_CLK_TCK")
        cpu = {name: (process_cpu_ticks(pid) - ticks0[name]) / hz / elapsed for name, pid in watch.items()}
        results = {who: recv_report(c, window.win_end + 20, who) for who, c in conns}
        sub = results.pop("subscriber")
        return RunResult(rate(sub[1], sub[2]), sum(rate(r[1], r[2]) for r in results.values()), cpu)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 9)
                p.join(5)
        for _, c in conns:
            c.close()


# ------------------------------------------------------------------------------------------------ main


def ws_gateway_config(port: int, broker_port: int, ws_upstream: int = 0) -> str:
    """The harness's gateway settings with the listener turned into mqtt-ws on PATH; with ``ws_upstream``
    its target is mosquitto's websockets listener on that port instead of the plain one."""
    config = gateway_config(port, broker_port)
    config = config.replace('protocol = "mqtt"', f'protocol = "mqtt-ws"\npath_prefix = "{PATH}"', 1)
    if ws_upstream:
        config = config.replace(f"tcp://127.0.0.1:{broker_port}", f"ws://127.0.0.1:{ws_upstream}{PATH}", 1)
    return config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured window per run (default 3)")
    ap.add_argument("--warmup", type=float, default=1.5, help="load before the window opens (default 1.5)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, each direct then gateway (default 3)")
    ap.add_argument("--publishers", type=int, default=4, help="publisher connections (default 4)")
    ap.add_argument(
        "--payload", type=int, default=PAYLOAD_SIZE, help=f"payload bytes (default {PAYLOAD_SIZE})"
    )
    ap.add_argument(
        "--upstream",
        choices=("ws", "tcp"),
        default="ws",
        help="the gateway's target: mosquitto's websockets listener (default) or its plain listener",
    )
    ap.add_argument(
        "--workdir", type=Path, help="keep configs and logs here (default: a temporary directory)"
    )
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.reps < 1 or args.publishers < 1 or args.payload < 0:
        ap.error("--seconds, --reps and --publishers must be positive")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferryman-ws-bench-"))
    broker_port, ws_port = free_port(), free_port()
    ws_listener = f"listener {ws_port} 127.0.0.1\nprotocol websockets\nsocket_domain ipv4\n"
    gw_port = free_port()
    print(f"machine: {machine_line()}")
    print(
        f"load: {args.publishers} publishers, QoS 0 PUBLISH of {args.payload} bytes, one masked binary frame "
        f"each, {BATCH_BYTES // 1024} KiB batches; 1 subscriber on bench/#; {args.warmup:g} s warm-up + "
        f"{args.seconds:g} s window; {args.reps} reps; gateway target {args.upstream}://"
    )
    sys.stdout.flush()
    ratios: list[float] = []
    direct_rates: list[float] = []
    gw_rates: list[float] = []
    gw_us: list[float] = []
    gateway = Gateway(
        workdir,
        broker_port,
        config=ws_gateway_config(gw_port, broker_port, ws_port if args.upstream == "ws" else 0),
        port=gw_port,
    )
    try:
        gateway.start()
        for rep in range(1, args.reps + 1):
            with Mosquitto(workdir, port=broker_port, extra=ws_listener) as broker:
                time.sleep(0.5)
                d = run_load(
                    ws_port,
                    args.seconds,
                    args.warmup,
                    args.publishers,
                    {"mosquitto": broker.pid},
                    args.payload,
                )
                time.sleep(0.5)
                watch = {"gateway": gateway.pid, "mosquitto": broker.pid}
                g = run_load(gateway.port, args.seconds, args.warmup, args.publishers, watch, args.payload)
            ratio = g.received_per_s / d.received_per_s if d.received_per_s else 0.0
            us = 1e6 * g.cpu["gateway"] / g.received_per_s if g.received_per_s else 0.0
            ratios.append(ratio)
            direct_rates.append(d.received_per_s)
            gw_rates.append(g.received_per_s)
            gw_us.append(us)
            print(
                f"rep {rep}: msg/s received: direct ws {d.received_per_s:7.0f} ({d.sent_per_s:7.0f} sent) | "
                f"gateway {g.received_per_s:7.0f} ({g.sent_per_s:7.0f} sent) ratio {ratio:.3f}\n"
                f"       cores busy: direct mosquitto {d.cpu['mosquitto']:.2f}; gateway run: gateway "
                f"{g.cpu['gateway']:.2f} mosquitto {g.cpu['mosquitto']:.2f}; gateway CPU {us:.2f} us/msg"
            )
            sys.stdout.flush()
    finally:
        gateway.stop()
    print(f"direct_ws_msgs_per_s: {statistics.median(direct_rates):.0f}")
    print(f"gateway_ws_msgs_per_s: {statistics.median(gw_rates):.0f}")
    print(f"gateway_cpu_us_per_msg: {statistics.median(gw_us):.2f}")
    print(f"per_rep_ratios: {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"ratio_gateway_over_direct_ws: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
