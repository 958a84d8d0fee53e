"""What hostile clients cost everyone else: a good client's QoS 1 round trips through the gateway, measured
alone and then while attackers run, side by side in one run.

The good client (this process, one raw MQTT 3.1.1 socket) publishes QoS 1 on ``bench/rtt`` and waits for
each PUBACK, one at a time. Each attack runs in its own OS processes (so an attacker never shares a GIL
with the client it disturbs) for the same window:

- ``ws-ping-flood``: one unauthenticated WebSocket client that never sends CONNECT and sends pings as fast
  as it can while reading the pongs (reconnecting whenever the gateway cuts it off);
- ``connect-props``: two senders of 1 MiB MQTT 5 CONNECTs holding ~210,000 empty user properties;
- ``subscribe-filters``: two authenticated 3.1.1 clients sending 1 MiB SUBSCRIBEs of ~260,000 filters;
- ``slowloris``: 200 connections that trickle a CONNECT one byte a second.

Printed per phase: round trips completed, p50 / p99 / max in ms, and p99 ÷ the p99 measured alone.
Everything listens on 127.0.0.1 on free ports; every process started is stopped by its PID.

    .venv/bin/python bench/attack_impact.py [--seconds 5] [--workdir DIR]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse
import base64
import contextlib
import multiprocessing
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _harness import (
    PASSWORD,
    USERNAME,
    Gateway,
    Mosquitto,
    MqttSession,
    _read_packet,
    _string,
    connect_packet,
    machine_line,
    percentile,
    publish_packet,
    remaining_length,
)

from tests.servers import free_port


def gateway_config(mqtt_port: int, ws_port: int, broker_port: int) -> str:
    return f"""\
[log]
level = "warning"
[metrics]
address = ""

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{mqtt_port}"
target = "tcp://127.0.0.1:{broker_port}"
connect_timeout = 3.0

[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "127.0.0.1:{ws_port}"
target = "tcp://127.0.0.1:{broker_port}"
path_prefix = "/mqtt"
connect_timeout = 3.0

[auth]
handler = "static"
[[auth.users]]
username = "{USERNAME}"
password = "{PASSWORD}"
publish = ["bench/#"]
subscribe = ["bench/#"]
"""


# ------------------------------------------------------------------------------------------------ attackers


def _until(deadline: float, attack: Callable[[], None]) -> None:
    """Runs one attack connection after another until the deadline (the gateway may cut each off)."""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            attack()


def ws_ping_flood(port: int, deadline: float) -> None:
    def once() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.settimeout(0.5)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n"
                "Origin: http://evil.example\r\n\r\n"
            ).encode()
        )
        ping = b"\x89\x80" + os.urandom(4)  # masked, empty
        batch = ping * 4096
        try:
            while time.monotonic() < deadline:
                sock.sendall(batch)
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    while sock.recv(1 << 20, socket.MSG_DONTWAIT):
                        pass
        finally:
            sock.close()

    _until(deadline, once)


def _user_properties_connect() -> bytes:
    props = b"\x26\x00\x00\x00\x00" * 209_000
    prop_block = remaining_length(len(props)) + props  # the same variable byte integer
    body = _string("MQTT") + bytes((5, 0x02)) + b"\x00\x3c" + prop_block + b"\x00" + _string("attacker")
    return b"\x10" + remaining_length(len(body)) + body


def connect_props(port: int, deadline: float) -> None:
    packet = _user_properties_connect()

    def once() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(packet)
            with contextlib.suppress(TimeoutError):
                while sock.recv(65536):
                    pass

    _until(deadline, once)


def _many_filters_subscribe() -> bytes:
    body = b"\x00\x01" + (_string("a") + b"\x00") * 260_000
    return b"\x82" + remaining_length(len(body)) + body


def subscribe_filters(port: int, deadline: float) -> None:
    packet = _many_filters_subscribe()

    def once() -> None:
        session = MqttSession.open(port, f"attacker-{os.getpid()}-{time.monotonic_ns()}", timeout=3)
        try:
            session.sock.sendall(packet)
            with contextlib.suppress(TimeoutError):
                while session.sock.recv(65536):
                    pass
        finally:
            session.close()

    _until(deadline, once)


def slowloris(port: int, deadline: float) -> None:
    packet = connect_packet("slow", keepalive=60)
    socks: list[tuple[socket.socket, int]] = []
    with contextlib.suppress(OSError):
        for _ in range(200):
            socks.append((socket.create_connection(("127.0.0.1", port), timeout=2), 0))
    while time.monotonic() < deadline and socks:
        kept = []
        for sock, sent in socks:
            try:
                sock.send(packet[sent : sent + 1])
                kept.append((sock, (sent + 1) % len(packet)))
            except OSError:
                sock.close()
        socks = kept
        time.sleep(1.0)
    for sock, _ in socks:
        sock.close()


ATTACKS: dict[str, tuple[Callable[[int, float], None], str, int]] = {
    # name: (function, which port it attacks, processes)
    "ws-ping-flood": (ws_ping_flood, "ws", 1),
    "connect-props": (connect_props, "mqtt", 2),
    "subscribe-filters": (subscribe_filters, "mqtt", 2),
    "slowloris": (slowloris, "mqtt", 1),
}

# ------------------------------------------------------------------------------------------------ good client


def round_trips(port: int, seconds: float) -> tuple[list[float], int]:
    """QoS 1 round trips for ``seconds``: latencies in ms, and how many were cut off (timeouts)."""
    session = MqttSession.open(port, f"good-{os.getpid()}", timeout=30)
    session.sock.settimeout(30)
    pending = bytearray(session.pending)
    latencies: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    packet_id = 0
    try:
        while time.monotonic() < end:
            packet_id = packet_id % 65535 + 1
            start = time.perf_counter()
            session.sock.sendall(publish_packet("bench/rtt", b"x" * 16, qos=1, packet_id=packet_id))
            try:
                while True:
                    first, body = _read_packet(session.sock, pending)
                    if first >> 4 == 4 and struct.unpack(">H", body[:2])[0] == packet_id:
                        break
            except TimeoutError:
                failures += 1
                break
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        session.close()
    return latencies, failures


def run_phase(name: str, ports: dict[str, int], seconds: float) -> tuple[list[float], int]:
    procs: list[multiprocessing.Process] = []
    if name != "alone":
        attack, which, count = ATTACKS[name]
        deadline = time.monotonic() + seconds + 1.0
        for _ in range(count):
            proc = multiprocessing.Process(target=attack, args=(ports[which], deadline), daemon=True)
            proc.start()
            procs.append(proc)
        time.sleep(0.5)  # let the attack get going
    try:
        return round_trips(ports["mqtt"], seconds)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="window per phase")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    multiprocessing.set_start_method("spawn")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferryman-attack-"))
    print(machine_line())
    with Mosquitto(workdir) as broker:
        mqtt_port, ws_port = free_port(), free_port()
        config = gateway_config(mqtt_port, ws_port, broker.port)
        with Gateway(workdir, broker.port, config=config, port=mqtt_port):
            ports = {"mqtt": mqtt_port, "ws": ws_port}
            base_p99 = 0.0
            columns = ("round trips", "p50 ms", "p99 ms", "max ms", "p99 ratio")
            print(f"{'phase':<20} " + " ".join(f"{c:>{max(8, len(c))}}" for c in columns))
            for phase in ("alone", *ATTACKS):
                latencies, failures = run_phase(phase, ports, args.seconds)
                latencies.sort()
                p50 = percentile(latencies, 50) if latencies else float("nan")
                p99 = percentile(latencies, 99) if latencies else float("nan")
                top = latencies[-1] if latencies else float("nan")
                if phase == "alone":
                    base_p99 = p99
                ratio = p99 / base_p99 if base_p99 else float("nan")
                cut = f"  ({failures} timed out)" if failures else ""
                row = f"{len(latencies):>11} {p50:>8.2f} {p99:>8.2f} {top:>8.1f} {ratio:>9.1f}"
                print(f"{phase:<20} {row}{cut}")


if __name__ == "__main__":
    main()
