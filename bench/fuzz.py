"""Fuzzing at scale: the codec and a live gateway fed malformed and adversarial byte streams.

    .venv/bin/python bench/fuzz.py [--codec-cases N] [--atheris-runs N] [--storm-seconds S] [--workers N]

Three phases, all with the generators of ``tests/fuzz_codec.py`` and ``tests/fuzz_live.py``:

1. Codec, random mutation: ``--codec-cases`` (default 1,000,000) mutated streams of valid packets of every
   type, MQTT 3.1.1 and 5, through ``Framer.feed`` (cut at a random point), ``decode``, ``publish_fields``
   and a re-encode round trip, in ``--workers`` processes. Any exception that is not an ``MqttError``, a
   reason code the proxy cannot send, or a round trip that changes the packet counts as an escaped
   exception (``CodecBug``), with its input printed.
2. Codec, coverage-guided: ``--atheris-runs`` (default 200,000) runs of atheris (libFuzzer) over the same
   checks, when ``atheris`` is installed (``.venv/bin/pip install atheris``); skipped otherwise.
3. Live: a gateway (static handler, the test suite's ``dev1`` user, ``max_packet_size`` 65536,
   ``connect_timeout`` 1 s) in front of a fresh mosquitto. A well-behaved client publishes QoS 1 (64 in
   flight) through it for ``--good-seconds`` alone, then during a storm of ``--storm-seconds`` from
   ``--storm-workers`` processes x ``--concurrency`` connections (targeted cases, mutated streams after a
   3.1.1 or 5 CONNECT, garbage first, mutated CONNECTs, resets, stalls, bad PUBRELs), then alone again. A
   subscriber on the broker checks that none of its messages is lost. The gateway's RSS is sampled every
   0.5 s; its log is searched for escaped exceptions.

The last lines are ``name: value``: ``codec_cases``, ``live_cases``, ``escaped_exceptions``,
``rss_before_mib``, ``rss_after_mib``, ``good_client_throughput_ratio``, ``machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _harness import PYTHON, REPO, Gateway, Mosquitto, free_port, machine_line, stop_process

GOOD_TOPIC = "dev1/good"
MAX_PACKET_SIZE = 65_536


def gateway_config(port: int, broker_port: int) -> str:
    return f"""\
[log]
level = "warning"

[metrics]
address = ""

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{broker_port}"
connect_timeout = 1.0
max_packet_size = {MAX_PACKET_SIZE}

[auth]
handler = "static"

[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#", "public/#"]
"""


# ------------------------------------------------------------------------------------------------ children
# Each child is this script run again with a --child-* option; it prints one JSON object on stdout.


def child_codec(cases: int, seed: int) -> dict[str, Any]:
    import random

    from tests.fuzz_codec import CodecBug, encode_packet, fix_length, mutate, random_packet, run_codec, varint

    rnd = random.Random(seed)
    corpus: list[tuple[bytes, int]] = []
    for _ in range(5000):
        v = rnd.choice((4, 5))
        corpus.append(
            (b"".join(encode_packet(random_packet(rnd, v), v) for _ in range(rnd.randrange(1, 4))), v)
        )
    outcomes: Counter[str] = Counter()
    bugs: list[str] = []
    nbugs = 0
    started = time.perf_counter()
    for i in range(cases):
        roll = rnd.random()
        version = rnd.choice((3, 4, 5))
        if roll < 0.85:
            data, version = rnd.choice(corpus)
            data = mutate(rnd, data, max_ops=4)
        elif roll < 0.95:  # a random body behind a consistent fixed header
            body = bytes(rnd.randrange(0, 256) for _ in range(rnd.randrange(0, 60)))
            data = fix_length(bytes((rnd.randrange(0, 256),)) + varint(len(body)) + body)
        else:  # arbitrary bytes
            data = bytes(rnd.randrange(0, 256) for _ in range(rnd.randrange(0, 80)))
        try:
            out = run_codec(data, version, (rnd.randrange(0, len(data) + 1),))
        except CodecBug as exc:
            nbugs += 1
            if len(bugs) < 20:
                bugs.append(str(exc))
            continue
        outcomes["decoded"] += out.packets
        outcomes.update(out.errors)
        if i and i % 200_000 == 0:
            print(f"codec worker {seed}: {i} cases", file=sys.stderr, flush=True)
    return {
        "cases": cases,
        "seconds": time.perf_counter() - started,
        "bugs": nbugs,
        "examples": bugs,
        "outcomes": dict(outcomes),
    }


def child_atheris(runs: int, crash_dir: str) -> None:
    """libFuzzer's loop over the codec checks; exits through atheris (crash file in ``crash_dir``)."""
    import atheris

    with atheris.instrument_imports():
        from ferryman.actors import topics  # noqa: F401
        from ferryman.protocols.mqtt import codec, encoder, framing, properties  # noqa: F401
    from tests.fuzz_codec import run_codec

    def one(data: bytes) -> None:
        if len(data) < 2:
            return
        version = (3, 4, 5)[data[0] % 3]
        cut = data[1]
        run_codec(data[2:], version, (cut,) if cut else ())

    seeds = Path(crash_dir) / "corpus"
    seeds.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-artifact_prefix={crash_dir}/",
        "-print_final_stats=1",
        str(seeds),
    ]
    atheris.Setup(argv, one)
    atheris.Fuzz()


def child_storm(port: int, seconds: float, concurrency: int, seed: int, per_second: float) -> dict[str, Any]:
    import random

    import gevent
    import gevent.pool

    from tests.fuzz_live import StormResult, live_cases, run_storm_case, storm_case

    rnd = random.Random(seed)
    targeted = live_cases()
    result = StormResult()
    pool = gevent.pool.Pool(concurrency)
    started = time.monotonic()
    deadline = started + seconds
    n = 0
    while time.monotonic() < deadline:
        if per_second:  # paced: the n-th connection starts n / per_second seconds in
            delay = started + n / per_second - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
        sc = storm_case(rnd, MAX_PACKET_SIZE, targeted)
        pool.spawn(run_storm_case, port, sc, result, 3.0, 0.2)
        n += 1
    pool.join(timeout=30)
    return {
        "cases": result.cases,
        "by_kind": result.by_kind,
        "codes": {f"0x{k:02X}": v for k, v in sorted(result.codes.items())},
        "closed": result.closed,
        "problems": len(result.problems),
        "problem_kinds": dict(Counter(problem_kind(p) for p in result.problems)),
        "examples": _examples(result.problems),
    }


def _examples(problems: list[str], per_kind: int = 2) -> list[str]:
    seen: Counter[str] = Counter()
    out = []
    for p in problems:
        k = problem_kind(p)
        if seen[k] < per_kind:
            seen[k] += 1
            out.append(p[:600])
    return out


def problem_kind(problem: str) -> str:
    for pattern, name in (
        (r"0x89 server busy", "DISCONNECT 0x89 (server busy) for a bad client packet"),
        (r"undecodable packet 20", "malformed CONNACK sent"),
        (r"expected CONNACK 0x02", "no CONNACK 0x02 for an empty 3.1.1 client id without clean session"),
        (r"expected CONNACK", "wrong or missing CONNACK"),
        (r"expected DISCONNECT", "wrong or missing DISCONNECT reason code"),
        (r"not closed within", "bad connection not closed"),
        (r"valid stream was closed", "valid stream closed"),
        (r"no CONNACK for a valid", "valid CONNECT not answered"),
        (r"could not connect", "could not connect"),
    ):
        if re.search(pattern, problem):
            return name
    return "other: " + problem[:80]


def child_good(port: int, broker_port: int, seconds: float, window: int) -> dict[str, Any]:
    """A well-behaved client: QoS 1 PUBLISH through the gateway, ``window`` in flight; a subscriber on the
    broker counts what arrives. Returns a timeline of acknowledged messages and the loss."""
    import socket

    import gevent

    from ferryman.protocols.mqtt import codec
    from ferryman.protocols.mqtt.framing import Framer
    from ferryman.protocols.mqtt.packets import Connect, Publish, Subscribe, Subscription
    from tests.fuzz_codec import encode_packet

    def open_session(p: int, cid: str, user: str | None) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", p), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(encode_packet(Connect(cid, 4, username=user, password=b"pw1" if user else None), 4))
        data = s.recv(4)
        if data[:1] != b"\x20" or data[3:4] != b"\x00":
            raise RuntimeError(f"CONNECT refused: {data.hex()}")
        return s

    sub = open_session(broker_port, f"good-sub-{os.getpid()}", None)
    sub.sendall(codec.encode(Subscribe(1, [Subscription(GOOD_TOPIC, 0)]), 4))
    received: list[int] = []
    suback = threading.Event()

    def subscriber() -> None:
        framer = Framer()
        while True:
            try:
                data = sub.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf, frames = framer.feed(data)
            for s, b, e in frames:
                if buf[s] >> 4 == 9:
                    suback.set()
                elif buf[s] >> 4 == 3:
                    packet = codec.decode(buf[s], buf[b:e], 4)
                    assert isinstance(packet, Publish)
                    received.append(int(packet.payload))

    reader = gevent.spawn(subscriber)
    while not suback.is_set():
        gevent.sleep(0.01)
    pub = open_session(port, f"good-pub-{os.getpid()}", "dev1")
    framer = Framer()
    timeline: list[tuple[float, int]] = []  # (time.monotonic(), acknowledged so far): one clock for all
    sent = acked = 0
    started = time.monotonic()
    last = started
    timeline.append((started, 0))
    pid = 0
    while True:
        now = time.monotonic()
        if now - last >= 0.25:
            timeline.append((now, acked))
            last = now
        if now - started >= seconds:
            break
        batch = []
        while sent - acked < window:
            pid = pid % 65535 + 1
            batch.append(encode_packet(Publish(GOOD_TOPIC, str(sent).encode(), 1, packet_id=pid), 4))
            sent += 1
        if batch:
            pub.sendall(b"".join(batch))
        pub.settimeout(1.0)
        try:
            data = pub.recv(65536)
        except TimeoutError:
            continue
        if not data:
            raise RuntimeError("the gateway closed the good client's connection")
        _, frames = framer.feed(data)
        acked += len(frames)
    timeline.append((time.monotonic(), acked))
    # Let the last acknowledged messages arrive, then count.
    deadline = time.monotonic() + 5
    while len(received) < acked and time.monotonic() < deadline:
        gevent.sleep(0.05)
    pub.close()
    sub.close()
    reader.kill()
    lost = acked - len(set(received) & set(range(acked)))
    in_order = received[: len(received)] == sorted(received)
    return {
        "timeline": timeline,
        "sent": sent,
        "acked": acked,
        "received": len(received),
        "lost": lost,
        "in_order": in_order,
    }


# ------------------------------------------------------------------------------------------------ parent


def spawn_child(args: list[str], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, str(Path(__file__).resolve()), *args],
        stdout=(workdir / f"{name}.json").open("wb"),
        stderr=(workdir / f"{name}.stderr").open("wb"),
        cwd=REPO,
    )


def child_result(proc: subprocess.Popen[bytes], workdir: Path, name: str, timeout: float) -> dict[str, Any]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise RuntimeError(f"{name} did not finish within {timeout:.0f}s") from None
    text = (workdir / f"{name}.json").read_text()
    if proc.returncode != 0 or not text.strip():
        err = (workdir / f"{name}.stderr").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} exited {proc.returncode}:\n{err}")
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.samples.append((time.monotonic(), rss_mib(self.pid)))
            except OSError:
                return
            self.stopped.wait(self.every)


def rate(timeline: list[tuple[float, int]], start: float, end: float) -> float:
    """Acknowledged messages per second between ``start`` and ``end`` (``time.monotonic()`` values)."""
    inside = [(t, n) for t, n in timeline if start <= t <= end]
    if len(inside) < 2:
        return 0.0
    (t0, n0), (t1, n1) = inside[0], inside[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def run_codec_phase(args: argparse.Namespace, workdir: Path) -> tuple[int, int, int, list[str]]:
    """(mutation cases, atheris runs, codec bugs, bug reports)."""
    per = [
        args.codec_cases // args.workers + (1 if i < args.codec_cases % args.workers else 0)
        for i in range(args.workers)
    ]
    started = time.monotonic()
    procs = [
        (f"codec{i}", spawn_child(["--child-codec", str(n), str(args.seed + i)], workdir, f"codec{i}"))
        for i, n in enumerate(per)
        if n
    ]
    results = [child_result(p, workdir, name, 3600) for name, p in procs]
    cases = sum(r["cases"] for r in results)
    bugs = sum(r["bugs"] for r in results)
    examples = [e for r in results for e in r["examples"]]
    outcomes: Counter[str] = Counter()
    for r in results:
        outcomes.update(r["outcomes"])
    took = time.monotonic() - started
    speed = f"{cases / took:.0f}/s, {args.workers} processes"
    print(f"codec (random mutation): {cases} cases in {took:.1f}s ({speed})")
    top = ", ".join(f"{k} {v}" for k, v in outcomes.most_common(8))
    print(f"codec outcomes: {top}")
    runs = 0
    if args.atheris_runs:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("codec (atheris): skipped, atheris is not installed (.venv/bin/pip install atheris)")
        else:
            started = time.monotonic()
            crash_dir = workdir / "atheris"
            crash_dir.mkdir(exist_ok=True)
            proc = spawn_child(
                ["--child-atheris", str(args.atheris_runs), str(crash_dir)], workdir, "atheris"
            )
            try:
                proc.wait(3600)
            except subprocess.TimeoutExpired:
                stop_process(proc)
            err = (workdir / "atheris.stderr").read_text(errors="replace")
            m = re.search(r"Done (\d+) runs", err) or re.search(r"stat::number_of_executed_units: (\d+)", err)
            runs = int(m.group(1)) if m else 0
            took = time.monotonic() - started
            cov = re.findall(r"cov: (\d+) ft: (\d+)", err)
            cov_text = f", coverage {cov[-1][0]} edges / {cov[-1][1]} features" if cov else ""
            print(f"codec (atheris, coverage-guided): {runs} runs in {took:.1f}s{cov_text}")
            if proc.returncode not in (0, None):
                bugs += 1
                tail = err[err.find("=== Uncaught") :][:2000] if "=== Uncaught" in err else err[-2000:]
                examples.append(f"atheris crash (exit {proc.returncode}; inputs in {crash_dir}):\n{tail}")
    return cases, runs, bugs, examples


def run_live_phase(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    children: list[subprocess.Popen[bytes]] = []
    with Mosquitto(workdir) as broker:
        port = free_port()
        with Gateway(workdir, broker.port, gateway_config(port, broker.port), port) as gw:
            sampler = RssSampler(gw.pid)
            sampler.start()
            try:
                total = args.good_seconds * 2 + args.storm_seconds + 2
                good = spawn_child(
                    ["--child-good", str(port), str(broker.port), str(total), str(args.window)],
                    workdir,
                    "good",
                )
                children.append(good)
                time.sleep(1.0 + args.good_seconds)
                rss_before = rss_mib(gw.pid)
                storm_start = time.monotonic()
                print(f"live: gateway RSS {rss_before:.1f} MiB; a storm of {args.storm_seconds:.0f}s begins")
                workers = []
                for i in range(args.storm_workers):
                    storm_args = [
                        str(port),
                        str(args.storm_seconds),
                        str(args.concurrency),
                        str(args.seed + 100 + i),
                    ]
                    storm_args.append(str(args.storm_rate / args.storm_workers))
                    proc = spawn_child(["--child-storm", *storm_args], workdir, f"storm{i}")
                    children.append(proc)
                    workers.append((f"storm{i}", proc))
                storms = [child_result(p, workdir, name, args.storm_seconds + 120) for name, p in workers]
                storm_end = time.monotonic()
                good_result = child_result(good, workdir, "good", total + 60)
                time.sleep(3.0)  # connections still closing (connect timeout 1 s), then measure
                rss_after = rss_mib(gw.pid)
            finally:
                sampler.stopped.set()
                for child in children:
                    stop_process(child)
            log = gw.stderr()
    return {
        "storms": storms,
        "good": good_result,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "samples": sampler.samples,
        "storm_window": (storm_start, storm_end),
        "log": log,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--codec-cases", type=int, default=1_000_000, help="random mutation cases (default 1,000,000)"
    )
    ap.add_argument(
        "--atheris-runs", type=int, default=200_000, help="atheris runs, 0 to skip (default 200,000)"
    )
    ap.add_argument("--workers", type=int, default=2, help="processes for the codec cases (default 2)")
    ap.add_argument("--storm-seconds", type=float, default=60.0, help="length of the live storm (default 60)")
    ap.add_argument("--storm-workers", type=int, default=2, help="storm processes (default 2)")
    ap.add_argument(
        "--concurrency", type=int, default=100, help="connections per storm process (default 100)"
    )
    ap.add_argument(
        "--storm-rate",
        type=float,
        default=0.0,
        help="adversarial connections per second in all (default 0: as many as the gateway takes)",
    )
    ap.add_argument(
        "--good-seconds", type=float, default=10.0, help="good client alone, before and after (default 10)"
    )
    ap.add_argument(
        "--window", type=int, default=64, help="QoS 1 messages the good client keeps in flight (default 64)"
    )
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--no-live", action="store_true", help="codec phases only")
    ap.add_argument("--workdir", type=Path, default=None, help="keep configs, logs and child outputs here")
    ap.add_argument("--child-codec", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-atheris", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-storm", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--child-good", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    if args.child_codec:
        print(json.dumps(child_codec(*args.child_codec)))
        return 0
    if args.child_atheris:
        child_atheris(int(args.child_atheris[0]), args.child_atheris[1])
        return 0
    if args.child_storm or args.child_good:
        from gevent import monkey

        monkey.patch_all()
        if args.child_storm:
            port, seconds, conc, seed, per_second = args.child_storm
            print(json.dumps(child_storm(int(port), float(seconds), int(conc), int(seed), float(per_second))))
        else:
            port, broker_port, seconds, window = args.child_good
            print(json.dumps(child_good(int(port), int(broker_port), float(seconds), int(window))))
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferryman-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_line()}")
    print(f"workdir: {workdir}")
    codec_cases, atheris_runs, codec_bugs, bug_examples = run_codec_phase(args, workdir)
    for e in bug_examples[:10]:
        print(f"CODEC BUG: {e}")

    live_cases = 0
    gateway_escapes = 0
    rss_before = rss_after = rss_peak = 0.0
    ratio = 0.0
    if not args.no_live:
        from tests.fuzz_live import escaped, escaped_kinds

        live = run_live_phase(args, workdir)
        storms = live["storms"]
        live_cases = sum(s["cases"] for s in storms)
        kinds: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        problem_kinds: Counter[str] = Counter()
        for s in storms:
            kinds.update(s["by_kind"])
            codes.update(s["codes"])
            problem_kinds.update(s["problem_kinds"])
        per_s = live_cases / args.storm_seconds
        print(f"live: {live_cases} adversarial connections in {args.storm_seconds:.0f}s ({per_s:.0f}/s)")
        print(f"live cases by kind: {dict(kinds.most_common())}")
        print(f"live DISCONNECT reason codes received: {dict(sorted(codes.items()))}")
        wrong = sum(s["problems"] for s in storms)
        print(f"live wrong answers: {wrong}")
        for k, n in problem_kinds.most_common():
            print(f"  {n:6d} x {k}")
        for s in storms:
            for e in s["examples"]:
                print(f"    e.g. {e}")
        lines = escaped(live["log"])
        by_kind = escaped_kinds(live["log"])
        gateway_escapes = sum(by_kind.values()) or len(lines)
        print(f"live: escaped exceptions in the gateway log: {gateway_escapes} ({len(lines)} lines)")
        for k, n in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            print(f"  {n:6d} x {k}")
        rss_before, rss_after = live["rss_before"], live["rss_after"]
        start, end = live["storm_window"]
        during = [mib for t, mib in live["samples"] if start <= t <= end]
        rss_peak = max(during) if during else 0.0
        marks = [mib for t, mib in live["samples"]][:: max(1, len(live["samples"]) // 12)]
        print(f"live: gateway RSS over the run (MiB): {' '.join(f'{m:.0f}' for m in marks)}")
        good = live["good"]
        tl = [(t, n) for t, n in good["timeline"]]
        before = rate(tl, tl[0][0] + 1.0, start - 0.5)
        storm_rate = rate(tl, start + 2.0, end)
        after = rate(tl, end + 1.0, tl[-1][0])
        ratio = storm_rate / before if before else 0.0
        print(
            f"good client: {before:.0f} msg/s before, {storm_rate:.0f} during, {after:.0f} after the storm; "
            f"sent {good['sent']}, acknowledged {good['acked']}, lost {good['lost']}, "
            f"in order {good['in_order']}"
        )
        print(f"good_client_msgs_per_s_before: {before:.0f}")
        print(f"good_client_msgs_per_s_during: {storm_rate:.0f}")
        print(f"good_client_lost: {good['lost']}")
        print(f"live_wrong_answers: {wrong}")
        print(f"rss_peak_mib: {rss_peak:.1f}")
    print(f"codec_cases_random_mutation: {codec_cases}")
    print(f"codec_cases_atheris: {atheris_runs}")
    print(f"codec_bugs: {codec_bugs}")
    print(f"codec_cases: {codec_cases + atheris_runs}")
    print(f"live_cases: {live_cases}")
    print(f"escaped_exceptions: {codec_bugs + gateway_escapes}")
    print(f"rss_before_mib: {rss_before:.1f}")
    print(f"rss_after_mib: {rss_after:.1f}")
    print(f"good_client_throughput_ratio: {ratio:.3f}")
    print(f"machine: {machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
