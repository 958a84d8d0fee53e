"""Many replicas (docs/scale.md): the example of examples/replicas started by its own run.sh on free ports —
mosquitto with persistence, two ``ferryman run`` replicas with the example's TOML files, HAProxy with the
example's haproxy.cfg (TCP mode, send-proxy-v2, health checks on /health) in front of them.

- Failover: devices with persistent sessions (MQTT 3.1.1 clean session 0, MQTT 5 with a session expiry)
  publish and receive numbered QoS 1 messages through HAProxy; one replica is killed (SIGKILL) mid-load;
  every device it carried reconnects through the other one (its /metrics and HAProxy's statistics say so,
  and the broker kept each session), and every message whose PUBACK a publisher got reaches its subscriber
  (duplicates allowed: QoS 1 is at least once).
- The client-id stickiness recipe of the same haproxy.cfg: an id keeps going to one replica (HAProxy's stick
  table says which), a CONNECT that arrives in pieces is waited for, non-MQTT bytes are refused, empty ids
  are not stuck, and the ids of a dead replica move to the living one.

Every wait is a condition with a deadline, never a sleep that a duration assertion would hide behind; the
whole stack is stopped through run.sh (SIGTERM), which must stop every process it started, by PID."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.packets import Connack, Connect
from tests.rawclient import RawClient
from tests.servers import REPO, free_ports

EXAMPLE = REPO / "examples" / "replicas"
PROCESSES = ("mosquitto", "ferryman-a", "ferryman-b", "haproxy")
PORTS = (
    "BROKER_PORT",
    "A_PORT",
    "A_HEALTH_PORT",
    "B_PORT",
    "B_HEALTH_PORT",
    "HAPROXY_PORT",
    "HAPROXY_STICKY_PORT",
    "HAPROXY_STATS_PORT",
)
USER, PASSWORD = "device", "device-pw"  # examples/replicas/ferryman-*.toml


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """A process that has not exited: one of its threads is not a zombie. (Killed, a threaded process's
    main thread can be a zombie while the others still exit, holding its sockets, listeners included.)"""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            if stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
    return False


class Stack:
    """examples/replicas/run.sh on free ports, its state (logs, pid files, mosquitto.db, HAProxy's socket) in
    a directory of its own."""

    def __init__(self) -> None:
        # Under /tmp, mode 0755: mosquitto (started as root) writes its database as the "mosquitto" user.
        self.state = Path(tempfile.mkdtemp(prefix="ferryman-replicas-"))
        self.state.chmod(0o755)
        self.ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        env = dict(os.environ, STATE_DIR=str(self.state), PYTHON=sys.executable)
        env.update({name: str(port) for name, port in self.ports.items()})
        self.run_log = self.state / "run.log"
        self.proc = subprocess.Popen(
            ["bash", str(EXAMPLE / "run.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.run_log.open("wb"),
        )
        self.pids: dict[str, int] = {}

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while "run.sh: ready" not in self.log("run"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"run.sh did not come up:\n{self.log('run')}\n{self.logs()}")
            time.sleep(0.1)
        self.pids = {name: int((self.state / f"{name}.pid").read_text()) for name in PROCESSES}

    def log(self, name: str) -> str:
        path = self.state / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log\n{self.log(name)[-3000:]}" for name in PROCESSES)

    @property
    def front(self) -> int:
        return self.ports["HAPROXY_PORT"]

    @property
    def sticky(self) -> int:
        return self.ports["HAPROXY_STICKY_PORT"]

    def open_connections(self, replica: str) -> int:
        """``ferryman_connections_open`` of one replica's listener, from its /metrics."""
        port = self.ports[f"{replica.upper()}_HEALTH_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = re.search(r'^ferryman_connections_open\{listener="mqtt"\} (\S+)$', text, re.M)
        return int(float(found.group(1))) if found else 0

    def healthy(self, replica: str) -> bool:
        port = self.ports[f"{replica.upper()}_HEALTH_PORT"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def haproxy_stats(self, backend: str) -> dict[str, dict[str, str]]:
        """HAProxy's statistics (the stats page as CSV): one row per server of ``backend``."""
        url = f"http://127.0.0.1:{self.ports['HAPROXY_STATS_PORT']}/stats;csv"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode().lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == backend}

    def haproxy(self, command: str) -> str:
        """One command of HAProxy's runtime API (the stats socket of haproxy.cfg)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.state / "haproxy.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def stick_table(self) -> dict[str, str]:
        """``show table ferryman-sticky``: client id -> replica."""
        found = re.findall(r"key=(\S*) .*server_key=(\S+)", self.haproxy("show table ferryman-sticky"))
        return dict(found)

    def kill(self, name: str) -> None:
        """SIGKILL, and wait until the process is gone (its listening socket with it)."""
        os.kill(self.pids[name], signal.SIGKILL)
        until(lambda: not _alive(self.pids[name]), 10, f"{name} gone after SIGKILL")

    def stop(self) -> None:
        """SIGTERM to run.sh, which stops what it started; anything it left behind is a failure (and is
        killed here, by PID, so that nothing outlives the test)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left = [name for name, pid in self.pids.items() if _alive(pid)]
        for name in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pids[name], signal.SIGKILL)
        problems = [f"run.sh left {name} running" for name in left]
        if self.proc.returncode != 0:
            problems.append(f"run.sh exited with {self.proc.returncode}")
        for name in ("ferryman-a", "ferryman-b"):
            if "Traceback" in self.log(name):
                problems.append(f"{name} logged a traceback")
        report = f"{self.log('run')}\n{self.logs()}"
        shutil.rmtree(self.state, ignore_errors=True)
        assert not problems, f"{problems}\n{report}"


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


class Device:
    """A paho client with a fixed client id and a persistent session, connected through HAProxy; it
    reconnects by itself (paho's loop) when its connection is cut."""

    def __init__(self, client_id: str, v5: bool) -> None:
        self.client_id = client_id
        self.v5 = v5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        self.client.username_pw_set(USER, PASSWORD)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.connects: list[bool] = []  # session present, per CONNACK
        self.drops = 0
        self.subscribed = threading.Event()
        self.received: list[int] = []
        self.sent: list[tuple[int, mqtt.MQTTMessageInfo]] = []
        self.pubacks: set[int] = set()  # packet ids (paho's mids) whose PUBACK came back; none wraps here

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self.connects.append(bool(flags.session_present))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.drops += 1

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received.append(int(message.payload))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.pubacks.add(mid)

    def connect(self, port: int) -> None:
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 600  # the session outlives the connection by 10 minutes
            self.client.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
        else:
            self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def acked(self) -> set[int]:
        """The numbers of the messages whose PUBACK came back (looked up afterwards: a PUBACK may be handled
        before ``publish`` has returned the message's id)."""
        return {seq for seq, info in self.sent if info.mid in self.pubacks}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


PAIRS = 10  # 10 publishers + 10 subscribers = 20 devices


@pytest.mark.timeout(60)
def test_a_replica_dies_under_qos1_load_and_nothing_acknowledged_is_lost(stack: Stack) -> None:
    # Even pairs speak MQTT 3.1.1 (clean session 0), odd pairs MQTT 5 (clean start 0, session expiry).
    subscribers = [Device(f"replica-sub-{i:02d}", v5=bool(i % 2)) for i in range(PAIRS)]
    publishers = [Device(f"replica-pub-{i:02d}", v5=bool(i % 2)) for i in range(PAIRS)]
    devices = subscribers + publishers
    stop = threading.Event()

    def publish(index: int, device: Device) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            info = device.client.publish(f"fleet/replicas/{index}", str(seq).encode(), qos=1)
            device.sent.append((seq, info))  # queued by paho while disconnected, sent after reconnecting
            time.sleep(0.02)

    workers = [threading.Thread(target=publish, args=(i, p), daemon=True) for i, p in enumerate(publishers)]
    try:
        for device in devices:
            device.connect(stack.front)
        until(lambda: all(d.connects for d in devices), 6, "every device connected through HAProxy")
        for i, sub in enumerate(subscribers):
            sub.client.subscribe(f"fleet/replicas/{i}", qos=1)
        until(lambda: all(s.subscribed.is_set() for s in subscribers), 4, "every subscription acknowledged")
        on_a, on_b = stack.open_connections("a"), stack.open_connections("b")
        assert (on_a + on_b, min(on_a, on_b) > 0) == (2 * PAIRS, True), (on_a, on_b)  # leastconn spread them

        for worker in workers:
            worker.start()
        until(lambda: all(len(p.acked()) >= 30 for p in publishers), 6, "30 messages acknowledged each")

        stack.kill("ferryman-a")  # SIGKILL, mid-load
        moved = 0

        def everyone_on_b() -> bool:
            nonlocal moved
            moved = sum(1 for d in devices if d.drops)
            return (
                stack.open_connections("b") == 2 * PAIRS
                and all(d.client.is_connected() and len(d.connects) > bool(d.drops) for d in devices)
                and stack.haproxy_stats("ferryman")["b"]["scur"] == str(2 * PAIRS)
            )

        until(everyone_on_b, 10, "every device reconnected through replica b")
        assert moved == on_a, f"{moved} devices reconnected, {on_a} were on the dead replica"
        assert stack.haproxy_stats("ferryman")["a"]["status"] == "DOWN"
        assert stack.healthy("b") and not stack.healthy("a")
        # The broker kept every session: each device that moved found it (subscriptions, queued messages).
        assert all(d.connects[-1] for d in devices if d.drops)

        acked_at_reconnect = [len(p.acked()) for p in publishers]
        until(
            lambda: all(
                len(p.acked()) >= n + 20 for p, n in zip(publishers, acked_at_reconnect, strict=True)
            ),
            5,
            "20 more messages acknowledged each through the surviving replica",
        )
        stop.set()
        for worker in workers:
            worker.join(5)
        until(lambda: all(len(p.acked()) == len(p.sent) for p in publishers), 5, "every publish acknowledged")

        def missing() -> dict[str, list[int]]:
            return {
                p.client_id: sorted(p.acked() - set(s.received))[:10]
                for p, s in zip(publishers, subscribers, strict=True)
                if p.acked() - set(s.received)
            }

        with contextlib.suppress(AssertionError):
            until(lambda: not missing(), 5, "every acknowledged message delivered")
        assert not missing(), f"acknowledged but never delivered (first 10 per publisher): {missing()}"
        sent = sum(len(p.sent) for p in publishers)
        received = sum(len(s.received) for s in subscribers)
        print(f"\n{sent} messages published and acknowledged, {received} delivered ({received - sent} again)")
        assert received >= sent
    finally:
        stop.set()
        for device in devices:
            device.close()


def _connect_sticky(stack: Stack, client_id: str, split: bool = False) -> tuple[RawClient, str]:
    """A connection with ``client_id`` through the sticky frontend, and the replica that took it (the one
    whose listener holds one connection)."""
    client = RawClient(stack.sticky, version=4)
    if split:  # the CONNECT in two pieces, the second a moment later: HAProxy waits for the whole packet
        data = codec.encode(
            Connect(
                client_id=client_id,
                protocol_level=4,
                clean_start=True,
                keepalive=60,
                username=USER,
                password=PASSWORD.encode(),
            ),
            4,
        )
        client.send_raw(data[:7])
        time.sleep(0.3)
        client.send_raw(data[7:])
        connack: Connack = client.expect(Connack)
    else:
        connack = client.connect(client_id, username=USER, password=PASSWORD)
    assert connack.reason_code == 0, connack
    counts: dict[str, int] = {}

    def one_open() -> bool:
        counts.update({r: stack.open_connections(r) for r in ("a", "b") if stack.healthy(r)})
        return sum(counts.values()) == 1

    until(one_open, 5, f"{client_id}'s connection counted by one replica")
    return client, next(r for r, n in counts.items() if n == 1)


def _close(stack: Stack, client: RawClient) -> None:
    client.disconnect()
    until(
        lambda: all(stack.open_connections(r) == 0 for r in ("a", "b") if stack.healthy(r)),
        5,
        "the connection closed on its replica",
    )


@pytest.mark.timeout(60)
def test_client_id_stickiness_recipe(stack: Stack) -> None:
    ids = [f"sticky-{i}" for i in range(4)]
    where: dict[str, set[str]] = {cid: set() for cid in ids}
    for _ in range(3):
        for cid in ids:
            client, replica = _connect_sticky(stack, cid)
            where[cid].add(replica)
            _close(stack, client)
    assert all(len(replicas) == 1 for replicas in where.values()), where  # each id: always one replica
    first = {cid: next(iter(replicas)) for cid, replicas in where.items()}
    assert set(first.values()) == {"a", "b"}, first  # and the ids are spread over both
    assert {cid: r for cid, r in stack.stick_table().items() if cid in ids} == first

    # A CONNECT that arrives in pieces is waited for (tcp-request inspect-delay), and stuck as well.
    client, replica = _connect_sticky(stack, ids[0], split=True)
    assert replica == first[ids[0]]
    _close(stack, client)
    # What is not MQTT is refused without a byte (mqtt_is_valid).
    with socket.create_connection(("127.0.0.1", stack.sticky), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100) == b""
    # An empty client id (the broker names the client) is not stuck: one entry would pull them all together.
    client, _ = _connect_sticky(stack, "")
    _close(stack, client)
    assert "" not in stack.stick_table()

    # The ids of a dead replica move to the living one, and the table follows.
    dead = first[ids[0]]
    living = "b" if dead == "a" else "a"
    stack.kill(f"ferryman-{dead}")
    for cid in ids:
        client, replica = _connect_sticky(stack, cid)
        assert replica == living
        _close(stack, client)
    assert all(stack.stick_table()[cid] == living for cid in ids)
