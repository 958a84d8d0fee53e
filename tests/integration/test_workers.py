"""``ferryman run --workers 2`` against the session's mosquitto: connections spread over both workers (each
its own SO_REUSEPORT socket), one /metrics with the sum, the bridge in worker 0 only, a SIGHUP that reaches
the sessions of both workers, a SIGKILLed worker restarted while the listener keeps serving, SIGTERM that
drains every worker, and the start-up failures that stop the supervisor."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiocoap import Code

from ferryman.protocols.mqtt.packets import Disconnect
from tests.coap_support import CoapTarget, RawCoap, free_udp_port
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, free_ports, uid

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "info"
[metrics]
address = "127.0.0.1:{metrics_port}"
{run}
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port0}"
target = "tcp://127.0.0.1:{broker}"

[[listener]]
name = "pub"
protocol = "http"
address = "127.0.0.1:{port1}"
target = "mqtt"
{coap}

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = [{publish}]
subscribe = ["a/#", "b/#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "workers-bridge-{uid}"
"""


COAP = """
[[listener]]
name = "coap"
protocol = "coap"
address = "127.0.0.1:{coap_port}"
target = "coap://127.0.0.1:{target_port}"
"""


def config(broker: Mosquitto, publish: str = '"a/#"', run: str = "", coap: str = "") -> str:
    """The test's settings with {port0}, {port1} and {metrics_port} left for GatewayProcess to fill."""
    return (
        CONFIG.replace("{broker}", str(broker.port))
        .replace("{uid}", uid())
        .replace("{publish}", publish)
        .replace("{run}", run)
        .replace("{coap}", coap)
    )


def get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:  # 503: still JSON
        data = json.loads(exc.read())
    assert isinstance(data, dict)
    return data


def health(gw: GatewayProcess) -> dict[str, Any]:
    return get_json(f"http://127.0.0.1:{gw.metrics_port}/health")


def metric(gw: GatewayProcess, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name} {labels} not in /metrics:\n{text}"
    return float(found.group(1))


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def all_running(gw: GatewayProcess) -> dict[str, Any] | None:
    state = health(gw)
    workers = state.get("workers", [])
    ok = workers and all(
        w["state"] == "running" and (w.get("health") or {}).get("status") == "ok" for w in workers
    )
    return state if ok else None


def open_per_worker(gw: GatewayProcess) -> dict[int, int]:
    return {
        w["index"]: (w.get("health") or {}).get("connections_open", {}).get("mqtt", 0)
        for w in health(gw)["workers"]
    }


def spread_clients(gw: GatewayProcess, most: int = 40) -> list[RawClient]:
    """MQTT 5 sessions of dev1, opened (once no earlier one is open) until each worker holds at least one
    (the kernel picks the socket) and both workers' counts add up to them."""
    wait_for(lambda: not any(open_per_worker(gw).values()), what="earlier sessions closed")
    clients: list[RawClient] = []
    while len(clients) < most:
        c = RawClient(gw.ports[0], version=5)
        assert c.connect(f"w-{uid()}", "dev1", "pw1").reason_code == 0
        clients.append(c)
        counts = open_per_worker(gw)
        if len(clients) >= 2 and all(counts.values()) and sum(counts.values()) == len(clients):
            return clients
    raise AssertionError(f"{most} connections did not land on both workers: {open_per_worker(gw)}")


def worker_dir(pid: int) -> str:
    """The supervisor's directory a worker was started with (``--worker-dir DIR``)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("--worker-dir") + 1]


def alive(pid: int) -> bool:
    """Whether ``pid`` still exists, a zombie included: a SIGKILLed process's leader shows "Z" while its
    other threads may still hold its sockets; only once its parent reaped it is it gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def coap_target() -> Iterator[CoapTarget]:
    with CoapTarget() as target:
        yield target


@pytest.fixture(scope="module")
def gw(
    broker: Mosquitto, coap_target: CoapTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Two workers from the command line (the file has no [run] table)."""
    coap = COAP.format(coap_port=free_udp_port(), target_port=coap_target.port)
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("workers"), config(broker, coap=coap), ports=2, args=("--workers", "2")
    )
    gateway.start()
    wait_for(lambda: all_running(gateway), what="both workers running")
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def test_connections_land_on_both_workers_and_metrics_add_up(gw: GatewayProcess, broker: Mosquitto) -> None:
    clients = spread_clients(gw)
    try:
        state = health(gw)
        assert state["status"] == "ok"
        workers = state["workers"]
        assert [w["index"] for w in workers] == [0, 1]
        pids = {w["pid"] for w in workers} | {w["health"]["pid"] for w in workers}
        assert len(pids) == 2 and state["supervisor"]["pid"] not in pids  # three processes
        # one /metrics: the sum over the workers, what each worker counts in its own /health
        counts = open_per_worker(gw)
        assert sum(counts.values()) == len(clients)
        assert metric(gw, "ferryman_connections_open", 'listener="mqtt"') == len(clients)
        assert metric(gw, "ferryman_connections_total", 'listener="mqtt"') >= len(clients)
        assert metric(gw, "ferryman_workers_running") == 2
        assert metric(gw, "ferryman_actors") > 0  # read at scrape time in a worker: sampled into its file
        # the bridge's MQTT session and the publish-mode listener live in worker 0 only
        zero, one = (w["health"] for w in workers)
        assert "MqttBridgeClient" in zero["parts"] and one["parts"] == {}
        assert zero["listeners"] == {"mqtt": True, "pub": True, "coap": True}
        assert one["listeners"] == {"mqtt": True, "coap": True}
        request = urllib.request.Request(
            f"http://127.0.0.1:{gw.ports[1]}/a/{uid()}",
            data=b"through worker 0",
            headers={"Authorization": "Basic " + base64.b64encode(b"dev1:pw1").decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        # proxied traffic on every worker's sessions
        for c in clients:
            assert c.publish("a/x", b"hi", qos=1).reason_code < 0x80
    finally:
        for c in clients:
            c.disconnect()


def test_coap_in_both_workers(gw: GatewayProcess) -> None:
    """Plain CoAP in proxy mode runs in every worker: each binds the UDP port (aiocoap sets SO_REUSEPORT);
    the kernel sends each peer's datagrams to one of them, and requests from many peers are all answered."""
    port = int(re.search(r'name = "coap"\n.*\naddress = "127.0.0.1:(\d+)"', gw.config_path.read_text())[1])
    workers = {w["pid"] for w in health(gw)["workers"]}
    bound = subprocess.run(
        ["ss", "-H", "-u", "-a", "-n", "-p", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    assert workers == {int(pid) for pid in re.findall(r"pid=(\d+)", bound)}, bound
    for _ in range(12):  # 12 peers (source ports): both sockets take some
        with RawCoap(port) as peer:
            response = peer.request(Code.GET, "a/x?auth=dev1:pw1", timeout=10)
            assert response.code.is_successful(), response


def test_sighup_reaches_the_sessions_of_both_workers(gw: GatewayProcess, broker: Mosquitto) -> None:
    clients = spread_clients(gw)
    try:
        for c in clients:
            assert c.publish("a/x", b"before", qos=1).reason_code < 0x80
        logged = gw.stderr().count("settings reloaded")
        gw.rewrite_config(config(broker, publish='"b/#"'))  # dev1 may now publish to b/# only
        gw.send_signal(signal.SIGHUP)
        wait_for(lambda: gw.stderr().count("settings reloaded") >= logged + 2, what="both workers reload")
        assert re.search(r"worker 0 .*settings reloaded", gw.stderr())
        assert re.search(r"worker 1 .*settings reloaded", gw.stderr())
        for c in clients:  # every live session, on either worker, has the new grant
            assert c.publish("a/x", b"after", qos=1).reason_code == 0x87
            assert c.publish("b/x", b"after", qos=1).reason_code < 0x80
    finally:
        for c in clients:
            c.disconnect()
        gw.rewrite_config(config(broker))
        gw.send_signal(signal.SIGHUP)


def test_a_killed_worker_comes_back_and_the_listener_keeps_serving(gw: GatewayProcess) -> None:
    clients = spread_clients(gw)
    try:
        before = {w["index"]: w for w in health(gw)["workers"]}
        victim = before[1]["pid"]
        on_zero = open_per_worker(gw)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not alive(victim), what="the worker is dead and reaped")
        # the kernel now hands every connection to worker 0's socket (or the new worker 1's): none is lost
        for _ in range(10):
            c = RawClient(gw.ports[0], version=5)
            assert c.connect(f"k-{uid()}", "dev1", "pw1").reason_code == 0
            c.disconnect()
        state = wait_for(lambda: all_running(gw), what="worker 1 restarted")
        again = {w["index"]: w for w in state["workers"]}
        assert again[1]["pid"] != victim
        assert again[1]["restarts"] == before[1]["restarts"] + 1
        assert again[1]["last_exit"] == -signal.SIGKILL
        assert again[0]["pid"] == before[0]["pid"] and again[0]["restarts"] == before[0]["restarts"]
        assert re.search(rf"worker 1 \(pid {victim}\) exited with signal SIGKILL: restarting", gw.stderr())
        assert metric(gw, "ferryman_worker_restarts_total", 'worker="1"') >= 1
        # the dead worker's sessions are closed; worker 0's live on, and its gauge is what /metrics sums now
        survivors = [c for c in clients if not c.closed_within(0.5)]
        assert len(survivors) == on_zero
        wait_for(
            lambda: metric(gw, "ferryman_connections_open", 'listener="mqtt"') == on_zero,
            what="the dead worker's connections leave the sum",
        )
        for c in survivors:
            assert c.publish("a/x", b"still here", qos=1).reason_code < 0x80
            c.disconnect()
        fresh = spread_clients(gw)  # the new worker 1 takes connections again
        for c in fresh:
            c.disconnect()
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_drains_every_worker_and_exits_0(broker: Mosquitto, tmp_path: Path, sig: int) -> None:
    """Two workers from the file's [run] table; SIGTERM (or SIGINT) to the supervisor with sessions on
    both."""
    gateway = GatewayProcess(tmp_path / "drain", config(broker, run="[run]\nworkers = 2"), ports=2)
    gateway.start()
    try:
        state = wait_for(lambda: all_running(gateway), what="both workers running")
        pids = [w["pid"] for w in state["workers"]]
        directories = {worker_dir(pid) for pid in pids}
        clients = spread_clients(gateway)
    except BaseException:
        gateway.stop()
        raise
    rc, err = gateway.stop(sig)
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err
    assert not [pid for pid in pids if alive(pid)]
    for c in clients:  # every session was closed, MQTT 5 clients with DISCONNECT 0x8B (shutting down)
        got = c.drain(2.0)
        assert any(isinstance(p, Disconnect) and p.reason_code == 0x8B for p in got), got
        c.close()
    assert len(re.findall(r"worker \d .*gateway stopped", err)) == 2
    assert f"{signal.Signals(sig).name} received: stopping 2 worker(s)" in err
    assert "2 worker(s) stopped" in err
    for directory in directories:
        assert directory.startswith("/") and not Path(directory).exists()  # the metrics files are gone


def test_start_up_failures_stop_the_supervisor(broker: Mosquitto, tmp_path: Path) -> None:
    """An address held by another program: refused before any worker starts. A worker that cannot start
    (worker 0's publish-mode port): the supervisor stops the other and exits 1, no restart loop."""
    mqtt_port, pub_port, metrics_port = free_ports(3)
    text = config(broker).format(port0=mqtt_port, port1=pub_port, metrics_port=metrics_port)
    path = tmp_path / "ferryman.toml"
    path.write_text(text)
    command = [sys.executable, "-m", "ferryman", "run", "--config", str(path), "--workers", "2"]
    for held, expected in ((mqtt_port, "listener 'mqtt' cannot listen"), (pub_port, "before it was ready")):
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", held))
            other.listen()
            out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stderr[-3000:]
        assert expected in out.stderr
        assert "restarting" not in out.stderr and "Traceback" not in out.stderr
