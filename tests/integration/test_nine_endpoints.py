"""The example of examples/nine-endpoints: mGate's nine endpoints (MQTT, MQTT over WebSocket and HTTP, each
plain, TLS and mTLS with revocation checks) started at once from that file, as a new user would run them
(the development PKI, `ferryman responder`, `ferryman http-echo`), checked from outside with mosquitto_pub,
a paho WebSocket client and curl. Only the addresses are moved to free ports (environment overrides)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ferryman.protocols.mqtt.packets import Publish
from ferryman_devtools.pki import write_dev_pki
from tests.rawclient import RawClient
from tests.servers import REPO, GatewayProcess, Mosquitto, free_port, uid, wait_port

EXAMPLE = REPO / "examples" / "nine-endpoints" / "ferryman.toml"
NAMES = ["mqtt", "mqtt-tls", "mqtt-mtls", "ws", "ws-tls", "ws-mtls", "http", "http-tls", "http-mtls"]


def _child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ferryman", *args], stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto
) -> Iterator[tuple[GatewayProcess, Path]]:
    """The example as one process, and with two worker processes (``[run] workers`` from the environment:
    every endpoint answers from either worker)."""
    root = tmp_path_factory.mktemp("site")
    responder_port, echo_port = free_port(), free_port()
    certs = root / "certs"  # where `ferryman certs certs` puts it, relative to the example's ../../certs
    write_dev_pki(
        certs,
        ocsp_url=f"http://127.0.0.1:{responder_port}/ocsp",
        crl_url=f"http://127.0.0.1:{responder_port}/crl.pem",
    )
    workdir = root / "examples" / "nine-endpoints"
    workdir.mkdir(parents=True)
    children = [
        _child("responder", str(certs), "--address", f"127.0.0.1:{responder_port}"),
        _child("http-echo", "--address", f"127.0.0.1:{echo_port}"),
    ]
    try:
        wait_port(responder_port)
        wait_port(echo_port)
        gw = GatewayProcess(workdir, EXAMPLE.read_text().replace("{", "{{").replace("}", "}}"), ports=9)
        env = {"FERRYMAN_METRICS__ADDRESS": "", "FERRYMAN_RUN__WORKERS": str(request.param)}
        for i, port in enumerate(gw.ports):
            env[f"FERRYMAN_LISTENER__{i}__ADDRESS"] = f"127.0.0.1:{port}"
            if i < 6:
                env[f"FERRYMAN_LISTENER__{i}__TARGET"] = f"tcp://127.0.0.1:{broker.port}"
            else:
                env[f"FERRYMAN_LISTENER__{i}__TARGET"] = f"http://127.0.0.1:{echo_port}/"
        gw.env.update(env)
        gw.start()
        try:
            yield gw, certs
        finally:
            rc, err = gw.stop()
            assert rc == 0 and "Traceback" not in err, err[-3000:]
    finally:
        for child in children:
            child.terminate()
            child.wait(10)


def port(gw: GatewayProcess, name: str) -> int:
    return gw.ports[NAMES.index(name)]


def watch(broker: Mosquitto, topic: str) -> RawClient:
    w = RawClient(broker.port, 5)
    assert w.connect(f"w-{uid()}").reason_code == 0
    w.subscribe(topic, qos=1)
    return w


def mosquitto_pub(
    p: int, certs: Path, topic: str, cert: str = "", tls: bool = True
) -> subprocess.CompletedProcess[str]:
    args = ["mosquitto_pub", "-h", "localhost", "-p", str(p), "-t", topic, "-m", "nine", "-q", "1"]
    if tls:
        args += ["--cafile", str(certs / "ca.crt")]
    if cert:
        args += ["--cert", str(certs / f"{cert}.crt"), "--key", str(certs / f"{cert}.key")]
    else:
        args += ["-u", "dev1", "-P", "pw1"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def test_mqtt_endpoints(site: tuple[GatewayProcess, Path], broker: Mosquitto) -> None:
    gw, certs = site
    topic = f"dev1/{uid()}"
    w = watch(broker, topic)
    assert mosquitto_pub(port(gw, "mqtt"), certs, topic, tls=False).returncode == 0
    assert mosquitto_pub(port(gw, "mqtt-tls"), certs, topic).returncode == 0
    out = mosquitto_pub(port(gw, "mqtt-mtls"), certs, topic, cert="client")
    assert out.returncode == 0, out.stderr
    assert [w.expect(Publish).payload for _ in range(3)] == [b"nine"] * 3
    for bad in ("client-revoked", "client-unknown", "client-expired"):
        assert mosquitto_pub(port(gw, "mqtt-mtls"), certs, topic, cert=bad).returncode != 0, bad
    assert not [p for p in w.drain(0.3) if isinstance(p, Publish)]


def ws_publish(p: int, certs: Path, topic: str, *, tls: bool, cert: str = "") -> bool:
    """Connect over WebSocket to /mqtt, publish QoS 1, True when PUBACK came."""
    done: list[bool] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ws-{uid()}", transport="websockets")
    client.ws_set_options(path="/mqtt")
    if tls:
        client.tls_set(
            ca_certs=str(certs / "ca.crt"),
            certfile=str(certs / f"{cert}.crt") if cert else None,
            keyfile=str(certs / f"{cert}.key") if cert else None,
        )
    if not cert:
        client.username_pw_set("dev1", "pw1")
    client.on_publish = lambda *a: done.append(True)
    try:
        client.connect("localhost", p, keepalive=10)
    except (OSError, ssl.SSLError):
        return False
    client.loop_start()
    try:
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not client.is_connected():
            return False
        client.publish(topic, b"nine", qos=1)
        while not done and time.monotonic() < deadline:
            time.sleep(0.02)
        return bool(done)
    finally:
        client.disconnect()
        client.loop_stop()


def test_websocket_endpoints(site: tuple[GatewayProcess, Path], broker: Mosquitto) -> None:
    gw, certs = site
    topic = f"dev1/{uid()}"
    w = watch(broker, topic)
    assert ws_publish(port(gw, "ws"), certs, topic, tls=False)
    assert ws_publish(port(gw, "ws-tls"), certs, topic, tls=True)
    assert ws_publish(port(gw, "ws-mtls"), certs, topic, tls=True, cert="client")
    assert [w.expect(Publish).payload for _ in range(3)] == [b"nine"] * 3
    assert not ws_publish(port(gw, "ws-mtls"), certs, topic, tls=True, cert="client-revoked")
    assert not [p for p in w.drain(0.3) if isinstance(p, Publish)]


def curl(url: str, certs: Path, *extra: str) -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", str(certs / "ca.crt"), *extra, url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def test_http_endpoints(site: tuple[GatewayProcess, Path]) -> None:
    gw, certs = site
    plain = f"http://localhost:{port(gw, 'http')}/messages/dev1/t"
    tls = f"https://localhost:{port(gw, 'http-tls')}/messages/dev1/t"
    mtls = f"https://localhost:{port(gw, 'http-mtls')}/messages/dev1/t"
    for url, extra in ((plain, ["-u", "dev1:pw1"]), (tls, ["-u", "dev1:pw1"])):
        code, body = curl(url, certs, *extra, "-d", "x")
        assert code == 200, (url, code, body)
        assert json.loads(body)["body"] == "x"  # the echo target saw the request
    client = ["--cert", str(certs / "client.crt"), "--key", str(certs / "client.key")]
    code, body = curl(mtls, certs, *client, "-d", "x")
    assert code == 200, body
    assert curl(plain, certs, "-d", "x")[0] == 401
    assert curl(plain.replace("dev1/t", "other/t"), certs, "-u", "dev1:pw1", "-d", "x")[0] == 403
    revoked = ["--cert", str(certs / "client-revoked.crt"), "--key", str(certs / "client-revoked.key")]
    assert curl(mtls, certs, *revoked, "-d", "x")[0] == 0  # refused at the TLS layer: no HTTP answer


def test_the_example_file_checks_clean_once_the_certificates_exist(tmp_path: Path) -> None:
    workdir = tmp_path / "examples" / "nine-endpoints"
    workdir.mkdir(parents=True)
    shutil.copy(EXAMPLE, workdir / "ferryman.toml")
    run = [sys.executable, "-m", "ferryman", "check", "--config", str(workdir / "ferryman.toml")]
    before = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert before.returncode != 0 and "certs/server.crt" in before.stderr  # it names what is missing
    write_dev_pki(tmp_path / "certs")
    after = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert after.returncode == 0, after.stderr
