"""Shared pieces of the benchmarks: servers (mosquitto, the ferryman gateway), raw MQTT 3.1.1 packets, a fast
packet counter, a py-spy runner and the machine description.

Everything here talks to 127.0.0.1 only, picks free ports, and stops what it started by PID. The MQTT bytes
are written by hand (a handful of fixed layouts) so the load side shares no code with the proxy it measures.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test suite's server helpers serve the benchmarks too

from tests.servers import free_port, wait_port

PYTHON = (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)

_C = TypeVar("_C", bound="_Child")

USERNAME = "bench"
PASSWORD = "bench"

# ------------------------------------------------------------------------------------------------ sockets


def stop_process(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10.0
) -> None:
    """Signal one child by its PID, wait for it, and kill it if it does not stop in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------------------ servers


def mosquitto_version() -> str:
    try:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"mosquitto version (\S+)", out)
    return m.group(1) if m else "unknown"


class _Child:
    """A server child process of a benchmark: ``start`` it (``_spawn`` then wait for its port), ``stop``
    it by its PID, or use it as a context manager."""

    port: int
    proc: subprocess.Popen[bytes] | None = None
    start_timeout = 15.0
    stop_timeout = 10.0

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _failed(self) -> Exception | None:
        """What to raise instead when the child does not come up (None: the original error)."""
        return None

    def start(self) -> None:
        self.proc = self._spawn()
        try:
            wait_port(self.port, timeout=self.start_timeout, proc=self.proc)
        except Exception:
            self.stop()
            failure = self._failed()
            if failure is None:
                raise
            raise failure from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout=self.stop_timeout)
        self.proc = None

    def __enter__(self: _C) -> _C:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Mosquitto(_Child):
    """One mosquitto on ``port`` (a free one by default), configured for benchmarks: no persistence, and
    queues large enough that a subscriber which keeps up loses no QoS 0 message."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"

    def config(self) -> str:
        return (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            "max_queued_messages 1000000\n"
            "max_queued_bytes 0\n" + self.extra
        )

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config())
        with self.log.open("ab") as log:
            return subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log
            )


def gateway_config(
    port: int,
    broker_port: int,
    publish: tuple[str, ...] = ("bench/#",),
    subscribe: tuple[str, ...] = ("bench/#",),
    log_level: str = "warning",
) -> str:
    """ferryman settings: one MQTT listener on ``port`` proxying to ``broker_port``, metrics off, and the
    static handler with the one bench user (so every PUBLISH is authorized against its ACL)."""

    def toml_list(items: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    return f"""\
[log]
level = "{log_level}"

[metrics]
address = ""

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{broker_port}"

[auth]
handler = "static"

[[auth.users]]
username = "{USERNAME}"
password = "{PASSWORD}"
publish = {toml_list(publish)}
subscribe = {toml_list(subscribe)}
"""


class Gateway(_Child):
    """``python -m ferryman run --config FILE`` on a free port; stopped with SIGTERM."""

    def __init__(
        self, workdir: Path, broker_port: int, config: str | None = None, port: int | None = None
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.broker_port = broker_port
        self.config_path = workdir / f"ferryman-{self.port}.toml"
        self.stderr_path = workdir / f"ferryman-{self.port}.stderr"
        self.config = config if config is not None else gateway_config(self.port, broker_port)
        self.proc: subprocess.Popen[bytes] | None = None

    start_timeout = 30.0
    stop_timeout = 15.0

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        with self.stderr_path.open("wb") as err:
            return subprocess.Popen(
                [PYTHON, "-m", "ferryman", "run", "--config", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
            )

    def _failed(self) -> Exception | None:
        return RuntimeError(f"gateway did not start:\n{self.stderr()}")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


class BytePipe(_Child):
    """``bench/_pipe.py``: a plain gevent byte pipe from a free port to ``target_port`` (the baseline)."""

    def __init__(self, workdir: Path, target_port: int, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.target_port = target_port
        self.stderr_path = workdir / f"pipe-{self.port}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        script = Path(__file__).resolve().parent / "_pipe.py"
        with self.stderr_path.open("wb") as err:
            return subprocess.Popen(
                [PYTHON, str(script), str(self.port), str(self.target_port)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )


# ------------------------------------------------------------------------------------------------ MQTT bytes

PUBLISH = 3
CONNACK = 2
SUBACK = 9


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def read_remaining_length(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """(remaining length, body offset) of the packet whose first byte is at ``buf[pos]``, or None while its
    length bytes are incomplete. A fifth length byte raises ValueError (MQTT allows four)."""
    length, mult, i = 0, 1, pos + 1
    while i < end and i < pos + 5:
        b = buf[i]
        length += (b & 0x7F) * mult
        mult <<= 7
        i += 1
        if b < 0x80:
            return length, i
    if i >= pos + 5:
        raise ValueError("malformed remaining length")
    return None


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(
    client_id: str, username: str | None = USERNAME, password: str | None = PASSWORD, keepalive: int = 0
) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, no will. ``keepalive`` 0 means no PINGREQ is ever needed."""
    flags = 0x02
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    body = _string("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + payload
    return b"\x10" + remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int = 0) -> bytes:
    body = packet_id.to_bytes(2, "big") + _string(topic_filter) + bytes((qos,))
    return b"\x82" + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = _string(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes((0x30 | (qos << 1),)) + remaining_length(len(body)) + body


DISCONNECT_PACKET = b"\xe0\x00"


def _read_packet(sock: socket.socket, pending: bytearray) -> tuple[int, bytes]:
    """One whole packet (first byte, body) from ``sock``; bytes after it stay in ``pending``."""
    while True:
        header = read_remaining_length(pending, 0, len(pending)) if len(pending) >= 2 else None
        if header is not None:
            length, body = header
            end = body + length
            if len(pending) >= end:
                first, data = pending[0], bytes(pending[body:end])
                del pending[:end]
                return first, data
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        pending += data


class MqttSession:
    """A raw MQTT 3.1.1 connection past CONNACK; ``sock`` is the plain socket to blast or count on."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock = sock
        self.pending = pending  # bytes the server sent after the last packet waited for

    @classmethod
    def open(
        cls,
        port: int,
        client_id: str,
        username: str | None = USERNAME,
        password: str | None = PASSWORD,
        timeout: float = 10.0,
    ) -> MqttSession:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(connect_packet(client_id, username, password))
            pending = bytearray()
            first, body = _read_packet(sock, pending)
            if first >> 4 != CONNACK or len(body) < 2 or body[1] != 0:
                raise ConnectionError(f"CONNECT of {client_id!r} refused: {first:#x} {body.hex()}")
        except BaseException:
            sock.close()
            raise
        return cls(sock, bytes(pending))

    def subscribe(self, topic_filter: str, qos: int = 0, packet_id: int = 1) -> None:
        self.sock.sendall(subscribe_packet(packet_id, topic_filter, qos))
        pending = bytearray(self.pending)
        first, body = _read_packet(self.sock, pending)
        if first >> 4 != SUBACK or body[2:3] not in (b"\x00", b"\x01", b"\x02"):
            raise ConnectionError(f"SUBSCRIBE {topic_filter!r} refused: {first:#x} {body.hex()}")
        self.pending = bytes(pending)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class PacketCounter:
    """Counts the PUBLISH packets of an MQTT stream fed in arbitrary chunks, by framing every packet.

    Fast path: a run of packets of one size (one remaining-length byte) is checked with two strided slices
    (every packet's first byte and length byte) instead of a Python step per packet, so counting keeps up
    with any broker on one core. Mixed streams fall back to stepping packet by packet.
    """

    __slots__ = ("_pending", "_slow", "packets", "publishes")

    def __init__(self) -> None:
        self._pending = b""
        self._slow = 0
        self.publishes = 0
        self.packets = 0

    def feed(self, data: bytes) -> None:
        buf = self._pending + data if self._pending else data
        n = len(buf)
        pos = 0
        while pos + 1 < n:
            first = buf[pos]
            rl = buf[pos + 1]
            if rl < 0x80:
                size = rl + 2
                k = (n - pos) // size
                if k > 4 and not self._slow:
                    stop = pos + k * size
                    if buf[pos:stop:size].count(first) == k and buf[pos + 1 : stop : size].count(rl) == k:
                        self.packets += k
                        if first >> 4 == PUBLISH:
                            self.publishes += k
                        pos = stop
                        continue
                    self._slow = 64  # mixed sizes here: step through a few before trying a run again
                if pos + size > n:
                    break
                self._step(first)
                pos += size
                continue
            # Multi-byte remaining length.
            header = read_remaining_length(buf, pos, n)
            if header is None or header[1] + header[0] > n:
                break
            self._step(first)
            pos = header[1] + header[0]
        self._pending = buf[pos:] if pos < n else b""

    def _step(self, first: int) -> None:
        self.packets += 1
        if first >> 4 == PUBLISH:
            self.publishes += 1
        if self._slow:
            self._slow -= 1


# ------------------------------------------------------------------------------------------------ profiling


def pyspy_path() -> str | None:
    local = REPO / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_pyspy(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` for ``seconds`` into ``out`` (folded stacks: ``--format raw``)."""
    exe = pyspy_path()
    if exe is None:
        raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
    cmd = [exe, "record", "--format", "raw", "-r", str(rate), "-d", str(max(1, round(seconds)))]
    cmd += ["-o", str(out), "-p", str(pid)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Leaf frames of threads that wait rather than run (gevent's thread pool workers); py-spy counts some of them
# as active, so they are left out of the shares.
IDLE_LEAVES = ("acquire_with_timeout (_threading.py)",)


def summarize_folded(path: Path, top: int = 20) -> str:
    """Self and inclusive sample shares per function, and the hottest lines, from py-spy's folded (``raw``)
    output."""
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    line_n: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = stack.split(";")
        frames = [_short_frame(f) for f in raw]
        if not frames:
            continue
        if frames[-1] in IDLE_LEAVES:
            idle += n
            continue
        total += n
        self_n[frames[-1]] += n
        line_n[_short_frame(raw[-1], keep_line=True)] += n
        for f in set(frames):
            incl_n[f] += n
    if not total:
        return "no samples"
    out = [
        f"{total} samples ({idle} more of idle waiting threads left out)",
        f"{'self%':>6} {'incl%':>6}  function",
    ]
    out += [
        f"{100 * n / total:6.1f} {100 * incl_n[name] / total:6.1f}  {name}"
        for name, n in self_n.most_common(top)
    ]
    out.append(f"{'self%':>6}         line")
    out += [f"{100 * n / total:6.1f}         {name}" for name, n in line_n.most_common(top)]
    return "\n".join(out)


def _short_frame(frame: str, keep_line: bool = False) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)`` (or ``func (file.py:12)`` with ``keep_line``)."""
    m = re.match(r"(.*) \((.*?)(:\d+)?\)$", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({os.path.basename(m.group(2))}{m.group(3) or '' if keep_line else ''})"


# ------------------------------------------------------------------------------------------------ machine


def machine_line() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = ", " + line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores{cpu}, Python {platform.python_version()} ({platform.system()} "
        f"{platform.release()}), mosquitto {mosquitto_version()}"
    )


# ================================================================================================
# Latency benchmark (mqtt_latency.py): CPU meter, percentiles, timer slack, SCHED_FIFO, metrics-on config.
# Kept in its own section (its own imports too); nothing above depends on it.
# ================================================================================================

import ctypes
import math
import time
import urllib.request


def process_cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 when the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def machine_idle_ticks() -> int:
    """Idle + iowait jiffies of all CPUs together, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0
    return values[3] + (values[4] if len(values) > 4 else 0)


class CpuMeter:
    """Cores kept busy by named groups of processes between ``start()`` and ``stop()``, plus ``machine``
    (all CPUs) and ``others`` (the machine minus the groups: load from outside the benchmark).

    ``machine`` is the wall time minus the idle time of /proc/stat, not its busy fields: those are sampled at
    the timer tick, and on this kind of VM, with processes that run in bursts of tens of microseconds (a
    paced load), a third of the busy ticks went missing (the fields summed to 400 of 600 jiffies over 3 s)
    while the idle time stayed exact."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._ticks: dict[str, int] = {}
        self._idle = 0
        self._t0 = 0.0

    def _read(self) -> dict[str, int]:
        return {name: sum(process_cpu_ticks(pid) for pid in pids) for name, pids in self.groups.items()}

    def start(self) -> None:
        self._ticks = self._read()
        self._idle = machine_idle_ticks()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        ticks = self._read()
        idle = machine_idle_ticks()
        elapsed = max(1e-9, time.monotonic() - self._t0)
        hz = os.sysconf("SC_CLK_TCK")
        cpu = {name: (ticks[name] - self._ticks[name]) / hz / elapsed for name in self.groups}
        if idle:
            cores = os.cpu_count() or 1
            cpu["machine"] = min(cores, max(0.0, cores - (idle - self._idle) / hz / elapsed))
            cpu["others"] = max(0.0, cpu["machine"] - sum(cpu[name] for name in self.groups))
        return cpu


def percentile(sorted_values: list[int] | list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of an already sorted list; 0 for an empty one."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def set_timer_slack(ns: int = 1) -> bool:
    """Shrink this thread's timer slack (Linux; default 50 µs) so a select() timeout wakes on time. True when
    it was set."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0)) == 0  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


def with_metrics(config: str, metrics_port: int) -> str:
    """A ``gateway_config`` text with the /metrics endpoint on 127.0.0.1:``metrics_port``."""
    off = '[metrics]\naddress = ""'
    if off not in config:
        raise ValueError("no [metrics] address to replace in the gateway config")
    return config.replace(off, f'[metrics]\naddress = "127.0.0.1:{metrics_port}"')


def fetch_metrics(port: int, timeout: float = 5.0) -> dict[str, float]:
    """The gateway's /metrics as {sample name with labels: value} (comment lines left out)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def set_realtime(pid: int, priority: int = 10) -> int:
    """SCHED_FIFO at ``priority`` for every thread of ``pid`` (needs root or CAP_SYS_NICE): the process then
    runs ahead of ordinary processes whenever it is runnable. Returns the number of threads changed."""
    changed = 0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
            changed += 1
        except OSError:
            pass
    return changed


# ================================================================================================
# Scale benchmark (mqtt_scale.py): file-descriptor limits and /proc readings of a process's memory and fds.
# Kept in its own section; nothing above depends on it.
# ================================================================================================

import resource


def raise_nofile(want: int) -> str:
    """Raise this process's RLIMIT_NOFILE (inherited by every child started afterwards) to ``want`` if
    possible: the hard limit too when allowed (CAP_SYS_RESOURCE), else the soft limit up to the hard one.
    Returns what happened, for the output."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return f"raised soft and hard limit to {want} (was {soft}/{hard})"
        except (ValueError, OSError) as exc:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return (
                f"hard limit {hard} could not be raised to {want} ({exc}; needs CAP_SYS_RESOURCE); "
                f"soft limit set to {hard} (was {soft})"
            )
    new_soft = want if hard == resource.RLIM_INFINITY else max(soft, min(want, hard))
    if new_soft != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return f"soft limit {new_soft} (was {soft}), hard limit {hard}"


def nofile_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of ``pid`` (from /proc/<pid>/limits; 0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return 1 << 62 if value == "unlimited" else int(value)
    except (OSError, IndexError, ValueError):
        pass
    return 0


def proc_status_kib(pid: int, field: str = "VmRSS") -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, ...), in KiB; 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def open_fds(pid: int) -> int:
    """How many file descriptors ``pid`` has open now."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


# ------------------------------------------------------------------ load windows of the throughput benchmarks

Snapshot = tuple[float, int]  # (monotonic time, messages so far)


@dataclass(frozen=True)
class Window:
    """When the children of one load run start sending, and the steady window after the warm-up."""

    start_at: float
    win_start: float
    win_end: float


def wait_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def rate(first: Snapshot | None, last: Snapshot | None) -> float:
    """Messages per second between two snapshots (0 when the window was not seen whole)."""
    if first is None or last is None or last[0] <= first[0]:
        return 0.0
    return (last[1] - first[1]) / (last[0] - first[0])


def recv_report(conn: Connection, deadline: float, who: str) -> Any:
    """A child's next report over its pipe; its ("error", text) becomes a RuntimeError."""
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"{who} did not answer in time")
    msg = conn.recv()
    if msg[0] == "error":
        raise RuntimeError(msg[1])
    return msg


class SendFailed(Exception):
    """A publisher's socket failed during its window; the message says after how many messages."""


def send_window(
    sock: socket.socket, batch: bytes, per_batch: int, window: Window
) -> tuple[Snapshot | None, Snapshot | None, int]:
    """A publisher's load: from ``window.start_at`` write ``batch`` (``per_batch`` messages) as fast as TCP
    takes it until the window closes. Returns the snapshots at the window's start and end and the count."""
    sent = 0
    first: Snapshot | None = None
    try:
        wait_until(window.start_at)
        while True:
            sock.sendall(batch)
            sent += per_batch
            now = time.monotonic()
            if first is None and now >= window.win_start:
                first = (now, sent)
            if now >= window.win_end:
                return first, (now, sent), sent
    except OSError as exc:
        raise SendFailed(f"{exc!r} after {sent} messages") from exc
