"""XMPP round trip: paced MQTT PUBLISH -> ferryman's XMPP bridge -> an XMPP user, as a step test.

    .venv/bin/python bench/xmpp_roundtrip.py [--rates 500,1000,2000,3000] [--seconds 5] [--warmup 1]
                                             [--qos 0] [--profile FILE] [--workdir DIR]

Starts one mosquitto, one Prosody (config/prosody.cfg.lua on free ports, user ``alice`` registered) and
``ferryman run`` with only the bridge ([bridge.mqtt] + [bridge.xmpp], component mode, allowed_jids alice).
alice logs in (slixmpp, plain TCP, SCRAM), says ``subscribe bench/#`` and waits for ``subscribed bench/#``
and for a first delivery. Then, per rate, a publisher thread of this process sends pre-encoded PUBLISH
packets (raw socket, TCP_NODELAY) to mosquitto on a schedule planned in advance; the payload carries the
step, the sequence number and the planned send time (``time.perf_counter_ns``, the clock the receiver
reads too). alice's chat messages ``bench/x: <payload>`` are timestamped on arrival in slixmpp's handler.

Latency is planned send -> receipt (no coordinated omission: a late send counts its delay), over the
messages planned after the warm-up. ``received rate`` is the receipts of those messages over the window's
length (planned first -> last receipt). A step is *sustained* when no message of it is lost and the
received rate keeps up (>= 95 %). CPU is cores busy per process over the step (gateway, prosody,
mosquitto, this process). ``--profile FILE``: one more 2,000 msg/s step under py-spy on the gateway (also
done automatically when 2,000 msg/s is not sustained or its p99 misses 50 ms). "lost" = not received
within 4 s of the step's last send (a backlog counts as lost). The last two lines are the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    REPO,
    CpuMeter,
    Gateway,
    Mosquitto,
    MqttSession,
    free_port,
    machine_line,
    percentile,
    publish_packet,
    pyspy_path,
    set_timer_slack,
    stop_process,
    summarize_folded,
)

from tests.prosody import Prosody

TOPIC = "bench/x"
USER, USER_PW = "alice", "alice-pw"
TARGET_RATE = 2000
TARGET_P99_MS = 50.0
DRAIN_SECONDS = 4.0  # after the last planned send: wait this long at most for the last deliveries
STEP = 15.0  # safety limit per awaited setup event

CONFIG = """\
listener = []
[log]
level = "warning"
[metrics]
address = ""

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "bench-bridge"

[bridge.xmpp]
mode = "component"
jid = "{component}"
secret = "{secret}"
server = "127.0.0.1:{component_port}"
allowed_jids = ["{user_jid}"]
store = "{workdir}/bridge.sqlite3"
"""


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Step:
    rate: int
    planned: list[int] = field(default_factory=list)  # planned send time per sequence number (ns)
    sent_at: list[int] = field(default_factory=list)  # actual send time per sequence number (ns)
    received: dict[int, int] = field(default_factory=dict)  # seq -> receipt time (ns)
    dup: int = 0
    n_warm: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        window = range(self.n_warm, len(self.planned))
        lat = sorted((self.received[i] - self.planned[i]) / 1e6 for i in window if i in self.received)
        late = sorted((self.sent_at[i] - self.planned[i]) / 1e6 for i in window)
        got = [self.received[i] for i in window if i in self.received]
        span = (max(got) - self.planned[self.n_warm]) / 1e9 if got else 0.0
        sent_span = (self.planned[-1] - self.planned[self.n_warm]) / 1e9 if len(window) > 1 else 0.0
        return {
            "sent": float(len(window)),
            "received": float(len(lat)),
            "lost": float(len(window) - len(lat)),
            "dup": float(self.dup),
            "send_rate": (len(window) - 1) / sent_span if sent_span else 0.0,
            "recv_rate": len(lat) / span if span else 0.0,
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "max": percentile(lat, 100),
            "late_p99": percentile(late, 99),
        }


# ------------------------------------------------------------------------------------------------ MQTT side


def publish_paced(
    sock: socket.socket, step: Step, step_no: int, n: int, t0: int, stop: threading.Event
) -> None:
    """Sends ``n`` QoS 0 PUBLISH at ``step.rate`` from ``t0`` (planned times fixed in advance); all the due
    ones in one write when late. Runs in its own thread."""
    rate = step.rate
    step.planned = [t0 + i * 1_000_000_000 // rate for i in range(n)]
    packets = [publish_packet(TOPIC, f"{step_no} {i} {p}".encode()) for i, p in enumerate(step.planned)]
    sent_at = [0] * n
    clock = time.perf_counter_ns
    i = 0
    while i < n and not stop.is_set():
        now = clock()
        due = step.planned[i]
        if now < due:
            time.sleep((due - now) / 1e9)
            continue
        j = i + 1
        while j < n and step.planned[j] <= now:
            j += 1
        sock.sendall(b"".join(packets[i:j]) if j - i > 1 else packets[i])
        t = clock()
        for k in range(i, j):
            sent_at[k] = t
        i = j
    step.sent_at = sent_at


# ------------------------------------------------------------------------------------------------ XMPP side


class Receiver:
    """alice on slixmpp; chat bodies ``bench/x: <step> <seq> <planned>`` are timestamped into the step."""

    def __init__(self, server: Prosody) -> None:
        from slixmpp import ClientXMPP

        self.server = server
        self.xmpp = ClientXMPP(
            server.jid(USER), USER_PW, plugin_config={"feature_mechanisms": {"unencrypted_scram": True}}
        )
        self.xmpp.enable_direct_tls = False
        self.xmpp.enable_starttls = False
        self.xmpp.enable_plaintext = True
        self.xmpp.add_event_handler("message", self._on_message)
        self.steps: dict[int, Step] = {}
        self.other: asyncio.Queue[str] = asyncio.Queue()  # command replies and stray bodies
        self.prefix = TOPIC + ": "
        self.stragglers = 0

    def _on_message(self, msg: Any) -> None:
        t = time.perf_counter_ns()
        body = str(msg["body"])
        if body.startswith(self.prefix):
            parts = body[len(self.prefix) :].split(" ")
            step = self.steps.get(int(parts[0]))
            if step is None:  # after its step's drain: counted late, not measured
                self.stragglers += 1
                return
            else:
                seq = int(parts[1])
                if seq in step.received:
                    step.dup += 1
                else:
                    step.received[seq] = t
                return
        self.other.put_nowait(body)

    async def connect(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(_: Any) -> None:
            if not ready.done():
                ready.set_result(None)

        def fail(reason: Any) -> None:
            if not ready.done():
                ready.set_exception(RuntimeError(f"alice: {reason}"))

        self.xmpp.add_event_handler("session_start", done)
        self.xmpp.add_event_handler("failed_auth", fail)
        self.xmpp.add_event_handler("connection_failed", fail)
        self.xmpp.connect("127.0.0.1", self.server.c2s_port)
        await asyncio.wait_for(ready, STEP)
        self.xmpp.send_presence()

    def say(self, body: str) -> None:
        from slixmpp import JID

        self.xmpp.send_message(mto=JID(self.server.component_jid), mbody=body, mtype="chat")

    async def until_answered(self, text: str, want: str, timeout: float = 30.0) -> None:
        """Says ``text`` until the reply ``want`` comes (the gateway's component session connects late)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.say(text)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                try:
                    body = await asyncio.wait_for(self.other.get(), max(0.01, end - time.monotonic()))
                except TimeoutError:
                    break
                if body.startswith(want):
                    return
        raise RuntimeError(f"no {want!r} in answer to {text!r}")

    async def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 5)


# ------------------------------------------------------------------------------------------------ run


async def run_step(
    rx: Receiver,
    broker_port: int,
    step_no: int,
    rate: int,
    warmup: float,
    seconds: float,
    watch: dict[str, list[int]],
) -> Step:
    step = Step(rate)
    n_warm = round(rate * warmup)
    n = n_warm + round(rate * seconds)
    step.n_warm = n_warm
    rx.steps[step_no] = step
    mqtt = MqttSession.open(broker_port, f"bench-pub-{step_no}", None, None)
    stop = threading.Event()
    t0 = time.perf_counter_ns() + 200_000_000
    pub = threading.Thread(target=publish_paced, args=(mqtt.sock, step, step_no, n, t0, stop), daemon=True)
    meter = CpuMeter(watch)
    pub.start()
    try:
        warm_end = t0 + n_warm * 1_000_000_000 // rate
        await asyncio.sleep(max(0.0, (warm_end - time.perf_counter_ns()) / 1e9))
        meter.start()
        end = t0 + n * 1_000_000_000 // rate
        await asyncio.sleep(max(0.0, (end - time.perf_counter_ns()) / 1e9))
        step.cpu = meter.stop()
        deadline = time.monotonic() + DRAIN_SECONDS
        while len(step.received) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.to_thread(pub.join, 10)
        mqtt.close()
        rx.steps.pop(step_no, None)  # the figures are final: later arrivals are stragglers
    return step


def _fmt(step: Step) -> str:
    s = step.summary()
    cores = " ".join(f"{k} {v:.2f}" for k, v in step.cpu.items() if k != "machine")
    return (
        f"rate {step.rate:5d}: sent {s['send_rate']:6.0f}/s received {s['recv_rate']:6.0f}/s "
        f"{s['received']:.0f}/{s['sent']:.0f} lost {s['lost']:.0f} dup {s['dup']:.0f} | latency ms p50 "
        f"{s['p50']:.1f} p99 {s['p99']:.1f} max {s['max']:.1f} (send late p99 {s['late_p99']:.1f}) | "
        f"cores: {cores}"
    )


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    watch: dict[str, list[int]] = {}
    with Mosquitto(workdir) as broker:
        prosody = Prosody(workdir)
        prosody.start()
        gateway: Gateway | None = None
        rx: Receiver | None = None
        try:
            prosody.register(USER, USER_PW)
            config = CONFIG.format(
                broker=broker.port,
                component=prosody.component_jid,
                secret=prosody.component_secret,
                component_port=prosody.component_port,
                user_jid=prosody.jid(USER),
                workdir=workdir,
            )
            # Bridge only: the gateway opens no port of its own to wait for; readiness is the "list" answer.
            gateway = Gateway(workdir, broker.port, config=config, port=free_port())
            gateway.workdir.mkdir(parents=True, exist_ok=True)
            gateway.proc = gateway._spawn()
            watch = {
                "gateway": [gateway.pid],
                "prosody": [p for p in [prosody.pid()] if p is not None],
                "mosquitto": [broker.pid],
                "bench": [os.getpid()],
            }
            rx = Receiver(prosody)
            await rx.connect()
            await rx.until_answered("list", "", timeout=30)
            await rx.until_answered(f"subscribe {TOPIC.split('/')[0]}/#", "subscribed", timeout=15)
            await _first_delivery(rx, broker.port)
            print(
                f"setup: gateway pid {gateway.pid}, prosody pid {prosody.pid()}, mosquitto pid {broker.pid}"
            )
            print(
                "latency: planned MQTT send -> XMPP receipt at alice, ms; steps of "
                f"{args.warmup:g} s warm-up + {args.seconds:g} s measured, QoS 0 publisher"
            )
            sys.stdout.flush()
            steps: list[Step] = []
            for k, rate in enumerate(args.rates, start=1):
                step = await run_step(rx, broker.port, k, rate, args.warmup, args.seconds, watch)
                steps.append(step)
                print(_fmt(step))
                sys.stdout.flush()
                if gateway.proc is not None and gateway.proc.poll() is not None:
                    print(f"gateway exited: {gateway.stderr()[-2000:]}")
                    break
                await _settle(rx)
            at_target = next((s for s in steps if s.rate == TARGET_RATE), None)
            need_profile = args.profile is not None or (
                at_target is not None
                and (at_target.summary()["lost"] > 0 or at_target.summary()["p99"] > TARGET_P99_MS)
            )
            if need_profile:
                out = args.profile or workdir / "xmpp_2000.folded"
                await _profile(rx, broker.port, gateway, len(steps) + 1, args, watch, out)
        finally:
            if rx is not None:
                await rx.disconnect()
            if gateway is not None:
                stderr = gateway.stderr()
                gateway.stop()
                errors = [ln for ln in stderr.splitlines() if "Traceback" in ln or "ERROR" in ln.upper()]
                if errors:
                    print(f"gateway stderr: {len(errors)} error lines, e.g. {errors[0][:200]}")
            prosody.stop()

    ok = [s for s in steps if _sustained(s)]
    best = max(ok, key=lambda s: s.rate) if ok else None
    print(f"machine: {machine_line()}")
    if best is not None:
        b = best.summary()
        print(
            f"highest rate sustained (nothing lost, received >= 95 % of it): {best.rate} msg/s "
            f"(received {b['recv_rate']:.0f}/s), p99 {b['p99']:.1f} ms"
        )
    t = at_target.summary() if at_target is not None else None
    verdict = (
        "not measured"
        if t is None
        else "met"
        if t["lost"] == 0 and t["recv_rate"] >= 0.98 * TARGET_RATE and t["p99"] <= TARGET_P99_MS
        else "NOT met"
    )
    print(f"target: >= {TARGET_RATE} msg/s with p99 <= {TARGET_P99_MS:g} ms: {verdict}")
    print(f"xmpp_sustained_msgs_per_s: {best.summary()['recv_rate'] if best else 0:.0f}")
    print(f"xmpp_p99_ms_at_2000: {t['p99'] if t is not None else float('nan'):.1f}")
    return 0


def _sustained(step: Step) -> bool:
    """Nothing lost or duplicated, and received at >= 95 % of the paced rate (no backlog building up)."""
    s = step.summary()
    return s["lost"] == 0 and s["dup"] == 0 and s["recv_rate"] >= 0.95 * step.rate


async def _first_delivery(rx: Receiver, broker_port: int) -> None:
    """Publishes step 0 messages until one arrives: the bridge's broker subscription is asynchronous."""
    warm = Step(0)
    rx.steps[0] = warm
    mqtt = MqttSession.open(broker_port, "bench-pub-0", None, None)
    try:
        deadline = time.monotonic() + 20
        i = 0
        while not warm.received:
            if time.monotonic() > deadline:
                raise RuntimeError("no delivery through the bridge within 20 s")
            mqtt.sock.sendall(publish_packet(TOPIC, f"0 {i} {time.perf_counter_ns()}".encode()))
            i += 1
            await asyncio.sleep(0.2)
    finally:
        mqtt.close()
    await asyncio.sleep(0.5)


async def _settle(rx: Receiver) -> None:
    """After a step with a backlog, wait until its stragglers stop coming so that the next step starts from
    an idle bridge (at most 10 s)."""
    last = -1
    for _ in range(20):
        if rx.stragglers == last:
            break
        last = rx.stragglers
        await asyncio.sleep(0.5)


async def _profile(
    rx: Receiver,
    broker_port: int,
    gateway: Gateway,
    step_no: int,
    args: argparse.Namespace,
    watch: dict[str, list[int]],
    out: Path,
) -> None:
    exe = pyspy_path()
    if exe is None:
        print("profile: py-spy not found")
        return
    seconds = args.warmup + args.seconds
    cmd = [exe, "record", "--nonblocking", "--format", "raw", "-r", "200", "-d", str(round(seconds) + 1)]
    cmd += ["-o", str(out), "-p", str(gateway.pid)]
    import subprocess

    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)
        step = await run_step(rx, broker_port, step_no, TARGET_RATE, args.warmup, args.seconds, watch)
        print("profile step (gateway under py-spy --nonblocking):")
        print(_fmt(step))
        await asyncio.to_thread(spy.wait, seconds + 30)
    finally:
        stop_process(spy)
    print(f"profile: folded stacks in {out}")
    if out.exists():
        print(summarize_folded(out, top=25))
    await _settle(rx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--rates", default="500,1000,2000,3000", help="msg/s per step (default 500,1000,2000,3000)"
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="measured window per step (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="paced load before the window (default 1)")
    ap.add_argument("--profile", type=Path, help="one more 2,000 msg/s step under py-spy; folded stacks here")
    ap.add_argument(
        "--workdir", type=Path, help="keep configs and logs here (default: a temporary directory)"
    )
    args = ap.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if args.seconds <= 0 or args.warmup < 0 or not all(0 < r <= 50_000 for r in args.rates):
        ap.error("--seconds must be positive, --rates within 1..50000")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferryman-bench-xmpp-"))
    set_timer_slack(1)
    print(f"machine: {machine_line()}")
    print(f"workdir: {workdir}; repo {REPO}")
    sys.stdout.flush()
    return asyncio.run(bench(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
