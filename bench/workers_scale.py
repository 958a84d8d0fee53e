"""Every core: MQTT connects/s through ferryman with one worker and with two (``[run] workers``), side by side
in one run, the gateway the bottleneck, and the gateway's CPU per connect.

    .venv/bin/python bench/workers_scale.py [--clients 8] [--seconds 4] [--reps 3] [--workers 2]
                                            [--python-clients] [--workdir DIR]

One connection = TCP connect, MQTT 3.1.1 CONNECT (user ``bench`` / password ``bench``, checked by the
``static`` handler), CONNACK, DISCONNECT, close: the reconnect storm of issue 13. Two gateways run for the
whole benchmark in front of one mosquitto: ``w1`` (``workers = 1``: one process, no supervisor) and ``wN``
(``workers = N``: a supervisor and N workers, each with its own SO_REUSEPORT socket), both with /metrics on
(the default of a deployment; with workers, prometheus_client's multiprocess files). Each rep measures both,
in turn (the order alternates between reps), with the same clients.

**Keeping the clients off the gateway's CPU.** On a 2-core machine everything shares the two cores: the
clients, mosquitto and the gateway. Two workers can only be faster than one by the share of the second core
the clients and the broker leave them. So the clients are ``bench/connect_load.c``, compiled here with gcc:
a blocking socket and a pre-built CONNECT per connect, no allocation, no interpreter, ~1/10 of the Python
client's CPU per connect (``--python-clients`` runs ``mqtt_connect_rate.py``'s Python clients instead, for
comparison). What the clients and mosquitto still take is measured and printed: ``others_per_connect`` is
their CPU per connect, which caps the 2-core ratio at ``2 * gw / (gw + others)`` (gw: the gateway's CPU per
connect) whatever the gateway does. CPU comes from utime + stime in /proc/<pid>/stat of the supervisor and
every worker (``gateway``), mosquitto, the client processes; ``others`` is the load of the rest of the
machine (other work on a shared machine) over the same window. ``preemptions/connect`` counts the gateway's
involuntary context switches (/proc/<pid>/task/*/status) per connect: one worker has a core of its own
while the clients and mosquitto run on the other; two workers are preempted by them on both cores, and
each preemption costs the worker cache refills as well as the time (the gateway's CPU per connect grows).

The last lines are ``name: value`` figures: median connects/s of each over the reps, the median per-rep
ratio ``wN / w1`` (the issue's target: >= 1.6 with 2 workers on this 2-core machine), the median gateway
CPU µs per connect of each, and the client's and mosquitto's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    CpuMeter,
    Gateway,
    Mosquitto,
    free_port,
    gateway_config,
    machine_line,
    wait_until,
    with_metrics,
)

WARMUP = 0.5  # seconds of load before the counted window
HERE = Path(__file__).resolve().parent


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a supervisor's workers), from /proc."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found += [int(p) for p in text.split()]
    except OSError:
        pass
    return found


def context_switches(pids: list[int]) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of ``pids`` so far (/proc)."""
    voluntary = involuntary = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                lines = (task / "status").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


def compile_client(workdir: Path) -> Path | None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    binary = workdir / "connect_load"
    subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(binary), str(HERE / "connect_load.c")],
        check=True,
        capture_output=True,
    )
    return binary


def measure_c(
    binary: Path, port: int, clients: int, seconds: float, watch: dict[str, list[int]]
) -> tuple[float, int, dict[str, float], str]:
    """One window of ``clients`` connect_load processes on ``port``: (connects/s, failures, cores, error)."""
    start_at = time.monotonic() + 0.2
    win_start = start_at + WARMUP
    win_end = win_start + seconds
    procs = [
        subprocess.Popen(
            [binary, str(port), str(i), f"{start_at:.6f}", f"{win_start:.6f}", f"{win_end:.6f}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(clients)
    ]
    meter = CpuMeter({**watch, "clients": [p.pid for p in procs]})
    wait_until(win_start)
    meter.start()
    wait_until(win_end)
    cpu = meter.stop()
    counted = failed = 0
    errors = []
    for p in procs:
        out, _ = p.communicate(timeout=30)
        fields = out.split(" ", 3)
        counted += int(fields[0])
        failed += int(fields[2])
        if len(fields) > 3 and fields[3].strip():
            errors.append(fields[3].strip())
    return counted / seconds, failed, cpu, errors[0] if errors else ""


def measure_python(
    port: int, clients: int, seconds: float, watch: dict[str, list[int]]
) -> tuple[float, int, dict[str, float], str]:
    from mqtt_connect_rate import measure

    return measure(port, None, clients, seconds, watch)


def workers_ready(metrics_port: int, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/health", timeout=2) as r:
                state = json.load(r)
            if sum(1 for w in state.get("workers", []) if w.get("state") == "running") == count:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{count} workers not running after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    ap.add_argument(
        "--seconds", type=float, default=4.0, help="counted window per gateway per rep (default 4)"
    )
    ap.add_argument("--reps", type=int, default=3, help="reps (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="workers of the second gateway (default 2)")
    ap.add_argument("--python-clients", action="store_true", help="mqtt_connect_rate.py's Python clients")
    ap.add_argument(
        "--workdir", type=Path, help="keep configs and logs here (default: a temporary directory)"
    )
    args = ap.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.reps < 1 or args.workers < 2:
        ap.error("--clients, --seconds, --reps must be positive and --workers at least 2")
    tmp = tempfile.TemporaryDirectory(prefix="ferryman-workers-scale-")
    workdir: Path = args.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_line()}")
    print(f"started: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; loadavg {loadavg()}; workdir {workdir}")
    binary = None if args.python_clients else compile_client(workdir)
    client_kind = "C (bench/connect_load.c)" if binary is not None else "Python (mqtt_connect_rate.py)"
    broker = Mosquitto(workdir, extra="max_connections -1\nset_tcp_nodelay true\n")
    gateways: dict[str, tuple[Gateway, int]] = {}
    rates: dict[str, list[float]] = {}
    cpu_us: dict[str, list[float]] = {}
    invalid = 0
    try:
        broker.start()
        for name, count in (("w1", 1), (f"w{args.workers}", args.workers)):
            port, metrics_port = free_port(), free_port()
            config = with_metrics(gateway_config(port, broker.port), metrics_port)
            config += f"\n[run]\nworkers = {count}\n"
            gw = Gateway(workdir, broker.port, config=config, port=port)
            gw.start()
            if count > 1:
                workers_ready(metrics_port, count)
            gateways[name] = (gw, count)
        print(
            f"clients: {args.clients} {client_kind} processes; {args.seconds:g} s counted per gateway "
            f"per rep after {WARMUP:g} s warm-up; {args.reps} reps; CONNECT/CONNACK/DISCONNECT/close, "
            "static handler, /metrics on"
        )
        for name, (gw, _) in gateways.items():
            print(f"{name}: pids {[gw.pid, *children(gw.pid)]}")
        sys.stdout.flush()
        for gw, _ in gateways.values():  # first connects: imports, pools
            if binary is not None:
                measure_c(binary, gw.port, 2, 0.5, {})
            else:
                measure_python(gw.port, 2, 0.5, {})
        names = list(gateways)
        for rep in range(args.reps):
            for name in names if rep % 2 == 0 else list(reversed(names)):
                gw, _ = gateways[name]
                watch = {"gateway": [gw.pid, *children(gw.pid)], "mosquitto": [broker.pid]}
                switches = context_switches(watch["gateway"])
                if binary is not None:
                    rate, failed, cpu, err = measure_c(binary, gw.port, args.clients, args.seconds, watch)
                else:
                    rate, failed, cpu, err = measure_python(gw.port, args.clients, args.seconds, watch)
                after = context_switches(watch["gateway"])
                # switches over the whole load (warm-up too) per connect of the window's rate
                preempted = (after[1] - switches[1]) / max(1.0, rate * (args.seconds + WARMUP))
                cpu_us.setdefault(f"{name}:preempted", []).append(preempted)
                rates.setdefault(name, []).append(rate)
                per = {
                    g: 1e6 * cpu.get(g, 0.0) / rate if rate else 0.0
                    for g in ("gateway", "mosquitto", "clients")
                }
                for group, us in per.items():
                    cpu_us.setdefault(f"{name}:{group}", []).append(us)
                if failed:
                    invalid += 1
                print(
                    f"rep {rep + 1} {name:4s} {rate:8.0f} connects/s"
                    + (f" ({failed} FAILED: {err})" if failed else "")
                    + f"; gateway {cpu.get('gateway', 0):.2f} cores {per['gateway']:.0f} us/connect "
                    f"{preempted:.2f} preemptions/connect; "
                    f"mosquitto {cpu.get('mosquitto', 0):.2f} cores {per['mosquitto']:.0f} us; "
                    f"clients {cpu.get('clients', 0):.2f} cores {per['clients']:.0f} us; "
                    f"machine {cpu.get('machine', 0):.2f}; others {cpu.get('others', 0):.2f} cores; "
                    f"loadavg {loadavg()}"
                )
                sys.stdout.flush()
    finally:
        for gw, _ in reversed(list(gateways.values())):
            gw.stop()
        broker.stop()
        tmp.cleanup()

    def med(xs: list[float]) -> float:
        return statistics.median(xs) if xs else 0.0

    many = f"w{args.workers}"
    ratios = [b / a for a, b in zip(rates.get("w1", []), rates.get(many, []), strict=True) if a > 0]
    figures: list[tuple[str, str]] = [("clients", client_kind)]
    for name in gateways:
        figures.append(
            (
                f"{name}_connects_per_s",
                f"{med(rates[name]):.0f}  ({', '.join(f'{r:.0f}' for r in rates[name])})",
            )
        )
    figures.append((f"ratio_{many}_over_w1", f"{med(ratios):.3f}  ({', '.join(f'{x:.3f}' for x in ratios)})"))
    for name in gateways:
        figures.append((f"{name}_gateway_cpu_us_per_connect", f"{med(cpu_us[f'{name}:gateway']):.0f}"))
    for name in gateways:
        figures.append((f"{name}_gateway_preemptions_per_connect", f"{med(cpu_us[f'{name}:preempted']):.2f}"))
    others = [c + m for c, m in zip(cpu_us[f"{many}:clients"], cpu_us[f"{many}:mosquitto"], strict=True)]
    figures.append(("clients_cpu_us_per_connect", f"{med(cpu_us[f'{many}:clients']):.0f}"))
    figures.append(("mosquitto_cpu_us_per_connect", f"{med(cpu_us[f'{many}:mosquitto']):.0f}"))
    gw_many = med(cpu_us[f"{many}:gateway"])
    cap = args.workers * gw_many / (gw_many + med(others)) if gw_many else 0.0
    figures.append(
        (
            "ceiling_on_this_machine",
            f"{cap:.2f}x ({args.workers} cores shared by the gateway, clients, mosquitto)",
        )
    )
    if args.workers == 2:
        figures.append(
            ("target", f"ratio >= 1.6: {'met' if med(ratios) >= 1.6 else 'NOT met'} ({med(ratios):.2f})")
        )
    figures.append(("valid", "yes" if not invalid else f"NO ({invalid} windows with failures)"))
    for name, value in figures:
        print(f"{name}: {value}")
    print(f"ended: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; loadavg {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
