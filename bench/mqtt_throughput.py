"""MQTT throughput: the same QoS 0 load sent directly to mosquitto and through ferryman, in one run.

    .venv/bin/python bench/mqtt_throughput.py [--seconds N] [--reps N] [--profile FILE]

Each repetition starts a fresh mosquitto and runs the load twice on it, first direct, then through the
gateway (one gateway process, static handler, for the whole benchmark). The load: 4 publisher processes,
each a raw socket that sends CONNECT, waits for CONNACK and then writes pre-encoded batches of QoS 0
PUBLISH packets (32-byte payload, topic ``bench/p<i>``) as fast as TCP takes them; one subscriber process
on ``bench/#`` over the same path counts the PUBLISH packets it receives by framing the stream. Rates are
taken over a steady window after a warm-up. The last line is the median of the per-repetition ratios
proxy / direct of the subscriber's received messages per second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BytePipe,
    Gateway,
    Mosquitto,
    MqttSession,
    PacketCounter,
    SendFailed,
    Snapshot,
    Window,
    free_port,
    machine_line,
    process_cpu_ticks,
    publish_packet,
    rate,
    recv_report,
    send_window,
    start_pyspy,
    stop_process,
    summarize_folded,
    wait_until,
)

TOPIC_FILTER = "bench/#"
PAYLOAD_SIZE = 32
BATCH_BYTES = 256 * 1024  # one sendall: ~5,900 packets of 44 bytes
RECV_BYTES = 1 << 20
RCVLOWAT = 64 * 1024  # the subscriber's socket is readable from this many bytes on (or after its timeout)
OTHER_LOAD_WARN = 0.25  # cores busy with processes outside the benchmark, median over the runs
QUIET_LOAD = 0.15  # a pair of runs is "quiet" when other processes kept fewer cores than this busy in both


# ------------------------------------------------------------------------------------------------ children


def publisher_main(port: int, index: int, conn: Connection) -> None:
    """One publisher connection: CONNECT, then pre-encoded QoS 0 PUBLISH batches until the window ends."""
    try:
        session = MqttSession.open(port, f"bench-pub-{index}-{os.getpid()}")
    except Exception as exc:
        conn.send(("error", f"publisher {index}: {exc!r}"))
        return
    packet = publish_packet(f"bench/p{index}", bytes(PAYLOAD_SIZE))
    per_batch = max(1, BATCH_BYTES // len(packet))
    batch = packet * per_batch
    conn.send(("ready", len(packet)))
    window: Window = conn.recv()
    try:
        first, last, sent = send_window(session.sock, batch, per_batch, window)
    except SendFailed as exc:
        conn.send(("error", f"publisher {index}: {exc}"))
        return
    finally:
        session.close()
    conn.send(("done", first, last, sent))


def subscriber_main(port: int, conn: Connection) -> None:
    """The counting subscriber: SUBSCRIBE bench/# QoS 0, then frame and count every PUBLISH received."""
    try:
        session = MqttSession.open(port, f"bench-sub-{os.getpid()}")
        session.subscribe(TOPIC_FILTER)
    except Exception as exc:
        conn.send(("error", f"subscriber: {exc!r}"))
        return
    counter = PacketCounter()
    counter.feed(session.pending)
    conn.send(("ready", 0))
    window: Window = conn.recv()
    sock = session.sock
    # Wake up for a good chunk, not for every packet: mosquitto writes each packet with its own send(), and a
    # recv() per packet would make the counting subscriber the direct path's bottleneck on 2 cores.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, RCVLOWAT)
    sock.settimeout(0.05)
    first: Snapshot | None = None
    last: Snapshot | None = None
    recv = sock.recv
    feed = counter.feed
    try:
        while True:
            try:
                data = recv(RECV_BYTES)
            except TimeoutError:
                pass  # nothing arrived: still look at the clock
            else:
                if not data:
                    raise ConnectionError("connection closed by the server")
                feed(data)
            now = time.monotonic()
            if first is None and now >= window.win_start:
                first = (now, counter.publishes)
            if now >= window.win_end:
                last = (now, counter.publishes)
                break
    except (OSError, ValueError) as exc:
        conn.send(("error", f"subscriber: {exc!r} after {counter.publishes} messages"))
        session.close()
        return
    conn.send(("done", first, last, counter.publishes))
    session.close()


# -------------------------------------------------------------------------------------------- one load run


@dataclass(frozen=True)
class RunResult:
    received_per_s: float
    sent_per_s: float
    cpu: dict[str, float]  # process (group) name -> cores busy during the window; "machine", "others"


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def run_load(port: int, seconds: float, warmup: float, publishers: int, watch: dict[str, int]) -> RunResult:
    """One bounded load run against 127.0.0.1:``port``; ``watch`` names processes whose CPU is reported."""
    ctx = mp.get_context("fork")
    procs: list[Any] = []
    conns: list[tuple[str, Connection]] = []
    try:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=subscriber_main, args=(port, child), daemon=True)
        p.start()
        procs.append(p)
        conns.append(("subscriber", parent))
        recv_report(parent, time.monotonic() + 15, "subscriber")  # subscribed before anyone publishes
        for i in range(publishers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=publisher_main, args=(port, i, child), daemon=True)
            p.start()
            procs.append(p)
            conns.append((f"publisher {i}", parent))
        for who, c in conns[1:]:
            recv_report(c, time.monotonic() + 15, who)
        start_at = time.monotonic() + 0.2
        window = Window(start_at, start_at + warmup, start_at + warmup + seconds)
        for _, c in conns:
            c.send(window)
        groups = {name: [pid] for name, pid in watch.items()}
        groups["subscriber"] = [procs[0].pid]
        groups["publishers"] = [p.pid for p in procs[1:]]
        wait_until(window.win_start)
        ticks0 = {name: sum(process_cpu_ticks(pid) for pid in pids) for name, pids in groups.items()}
        busy0, total0 = _machine_ticks()
        t0 = time.monotonic()
        wait_until(window.win_end)
        ticks1 = {name: sum(process_cpu_ticks(pid) for pid in pids) for name, pids in groups.items()}
        busy1, total1 = _machine_ticks()
        elapsed = time.monotonic() - t0
        hz = os.sysconf("SC_CLK_TCK")
        cpu = {name: (ticks1[name] - ticks0[name]) / hz / elapsed for name in groups}
        if total1 > total0:
            # The whole machine, in cores (os.cpu_count() is the maximum); what is not ours is other load.
            cpu["machine"] = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
            cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))
        deadline = window.win_end + 20
        results = {who: recv_report(c, deadline, who) for who, c in conns}
        sub = results.pop("subscriber")
        received = rate(sub[1], sub[2])
        sent = sum(rate(r[1], r[2]) for r in results.values())
        return RunResult(received, sent, cpu)
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 9)
                p.join(5)
        for _, c in conns:
            c.close()


# ------------------------------------------------------------------------------------------------ main


def _fmt_cpu(cpu: dict[str, float]) -> str:
    return " ".join(f"{name} {cores:.2f}" for name, cores in cpu.items())


def _cpu_us_per_msg(r: RunResult, proc: str) -> float:
    """CPU time ``proc`` spent per message delivered, in microseconds: robust to the machine's other load."""
    return 1e6 * r.cpu.get(proc, 0.0) / r.received_per_s if r.received_per_s else 0.0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=4.0, help="measured window per run (default 4)")
    ap.add_argument("--warmup", type=float, default=2.0, help="load before the window opens (default 2)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions, each direct then proxy (default 5)")
    ap.add_argument("--publishers", type=int, default=4, help="publisher connections (default 4)")
    ap.add_argument("--pipe", action="store_true", help="also run each rep through a plain gevent byte pipe")
    ap.add_argument(
        "--profile", type=Path, help="after the reps, one more proxied run under py-spy; stacks here"
    )
    ap.add_argument(
        "--workdir", type=Path, help="keep configs and logs here (default: a temporary directory)"
    )
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.reps < 1 or args.publishers < 1:
        ap.error("--seconds, --reps and --publishers must be positive")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferryman-bench-"))
    broker_port = free_port()  # every fresh mosquitto listens here, so one gateway serves all reps
    generator = (
        f"raw-socket: {args.publishers} publisher processes, each one TCP connection writing pre-encoded "
        f"{BATCH_BYTES // 1024} KiB batches of QoS 0 PUBLISH (44 bytes each, {PAYLOAD_SIZE}-byte payload) "
        "with blocking sendall; 1 subscriber process counting PUBLISH packets by framing"
    )
    print(f"machine: {machine_line()}")
    print(f"generator: {generator}")
    print(
        f"window: {args.warmup:g} s warm-up + {args.seconds:g} s measured per run, {args.reps} reps; "
        f"workdir {workdir}"
    )
    sys.stdout.flush()

    paths = ["direct", "proxy"] + (["pipe"] if args.pipe else [])
    results: dict[str, list[RunResult]] = {name: [] for name in paths}
    ratios: dict[str, list[float]] = {name: [] for name in paths[1:]}
    gateway = Gateway(workdir, broker_port)
    pipe = BytePipe(workdir, broker_port) if args.pipe else None
    try:
        gateway.start()
        if pipe is not None:
            pipe.start()
        for rep in range(1, args.reps + 1):
            with Mosquitto(workdir, port=broker_port) as broker:
                ports = {"direct": broker_port, "proxy": gateway.port}
                watches: dict[str, dict[str, int]] = {"direct": {}, "proxy": {"gateway": gateway.pid}}
                if pipe is not None:
                    ports["pipe"] = pipe.port
                    watches["pipe"] = {"pipe": pipe.pid}
                run: dict[str, RunResult] = {}
                for name in paths:
                    time.sleep(0.5)  # the broker drops the previous run's sessions
                    watch = {**watches[name], "mosquitto": broker.pid}
                    run[name] = run_load(ports[name], args.seconds, args.warmup, args.publishers, watch)
            d = run["direct"]
            figures = [f"direct {d.received_per_s:7.0f} ({d.sent_per_s:7.0f} sent)"]
            for name in paths:
                results[name].append(run[name])
                if name != "direct":
                    r = run[name]
                    ratio = r.received_per_s / d.received_per_s if d.received_per_s else 0.0
                    ratios[name].append(ratio)
                    figures.append(
                        f"{name} {r.received_per_s:7.0f} ({r.sent_per_s:7.0f} sent) ratio {ratio:.3f}"
                    )
            print(f"rep {rep}: msg/s received: " + " | ".join(figures))
            print(
                f"       CPU us per message: mosquitto direct {_cpu_us_per_msg(d, 'mosquitto'):.2f}, "
                f"mosquitto proxied {_cpu_us_per_msg(run['proxy'], 'mosquitto'):.2f}, "
                f"gateway {_cpu_us_per_msg(run['proxy'], 'gateway'):.2f}"
                + (f", pipe {_cpu_us_per_msg(run['pipe'], 'pipe'):.2f}" if "pipe" in run else "")
            )
            for name in paths:
                print(f"       cores busy, {name + ':':7} {_fmt_cpu(run[name].cpu)}")
            sys.stdout.flush()
        if args.profile is not None:
            _profile(gateway, broker_port, workdir, args)
    finally:
        if pipe is not None:
            pipe.stop()
        gateway.stop()

    for name in paths:
        print(f"{name}_msgs_per_s: {_median([r.received_per_s for r in results[name]]):.0f}")
        print(f"{name}_sent_msgs_per_s: {_median([r.sent_per_s for r in results[name]]):.0f}")
    for name, proc in (
        ("proxy", "gateway"),
        ("pipe", "pipe"),
        ("direct", "mosquitto"),
        ("proxy", "mosquitto"),
    ):
        if name in results:
            us = _median([_cpu_us_per_msg(r, proc) for r in results[name]])
            print(f"{name}_{proc}_cpu_us_per_msg: {us:.2f}")
    if args.pipe:
        print(f"ratio_pipe_over_direct: {_median(ratios['pipe']):.3f}")
        per_rep = [
            p.received_per_s / q.received_per_s
            for p, q in zip(results["proxy"], results["pipe"], strict=True)
        ]
        print(f"ratio_proxy_over_pipe: {_median(per_rep):.3f}")
    others = _median([r.cpu.get("others", 0.0) for rs in results.values() for r in rs])
    print(f"other_load_cores: {others:.2f}")
    if others > OTHER_LOAD_WARN:
        print(
            f"warning: other processes kept {others:.2f} of {os.cpu_count()} cores busy during the runs; "
            "the ratio is then lower than on a quiet machine (CPU us per message is the steadier figure)"
        )
    quiet = [
        ratio
        for ratio, d, p in zip(ratios["proxy"], results["direct"], results["proxy"], strict=True)
        if max(d.cpu.get("others", 0.0), p.cpu.get("others", 0.0)) < QUIET_LOAD
    ]
    print(
        f"quiet_reps: {len(quiet)} of {len(ratios['proxy'])} (other load < {QUIET_LOAD} cores in both runs)"
    )
    if quiet:
        print(f"ratio_proxy_over_direct_quiet_reps: {_median(quiet):.3f}")
    print(f"per_rep_ratios_proxy_over_direct: {' '.join(f'{r:.3f}' for r in ratios['proxy'])}")
    print(f"machine: {machine_line()}")
    print(f"generator: {generator}")
    print(f"ratio_proxy_over_direct: {_median(ratios['proxy']):.3f}")
    return 0


def _profile(gateway: Gateway, broker_port: int, workdir: Path, args: argparse.Namespace) -> None:
    """One more proxied run, with py-spy recording the gateway through the measured window."""
    with Mosquitto(workdir, port=broker_port) as broker:
        time.sleep(0.5)
        spy = start_pyspy(gateway.pid, args.warmup + args.seconds + 1, args.profile)
        try:
            time.sleep(0.5)  # py-spy attaches
            watch = {"gateway": gateway.pid, "mosquitto": broker.pid}
            r = run_load(gateway.port, args.seconds, args.warmup, args.publishers, watch)
        finally:
            try:
                spy.wait(args.warmup + args.seconds + 30)
            except subprocess.TimeoutExpired:
                stop_process(spy)
    print(f"profile: proxied run under py-spy: {r.received_per_s:.0f} msg/s received; {_fmt_cpu(r.cpu)}")
    print(f"profile: folded stacks in {args.profile}")
    if args.profile.exists():
        print(summarize_folded(args.profile))


if __name__ == "__main__":
    sys.exit(main())
