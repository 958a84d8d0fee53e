"""The ``http`` listener from outside: ``ferryman run`` with http listeners, curl as the client, the echo
target (``ferryman_devtools.echo``) in its own process, mosquitto and mosquitto_sub for publish mode,
and the dev PKI for TLS and mTLS."""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http_support import CurlFailed, EchoTarget, SilentTarget, Subscriber, curl, pki_args
from tests.servers import GatewayProcess, Mosquitto, free_port

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{{metrics_port}}"

[[listener]]
name = "web"
protocol = "http"
address = "127.0.0.1:{{port0}}"
target = "http://127.0.0.1:{echo}/up"
path_prefix = "/api"
bypass = ["/health", "/api/public"]
connect_timeout = 2.0
max_packet_size = 1024

[[listener]]
name = "dead"
protocol = "http"
address = "127.0.0.1:{{port1}}"
target = "http://127.0.0.1:{dead}"

[[listener]]
name = "silent"
protocol = "http"
address = "127.0.0.1:{{port2}}"
target = "http://127.0.0.1:{silent}"
connect_timeout = 1.0

[[listener]]
name = "pub"
protocol = "http"
address = "127.0.0.1:{{port3}}"
target = "mqtt"
path_prefix = "/pub"
max_packet_size = 1024

[[listener]]
name = "tls"
protocol = "http"
address = "127.0.0.1:{{port4}}"
target = "http://127.0.0.1:{echo}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"

[[listener]]
name = "mtls"
protocol = "http"
address = "127.0.0.1:{{port5}}"
target = "http://127.0.0.1:{echo}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "http-bridge-{uid}"
"""

OPEN_CONFIG = """
[metrics]
address = ""
[[listener]]
name = "open"
protocol = "http"
address = "127.0.0.1:{{port}}"
target = "http://127.0.0.1:{echo}"
path_prefix = "/api"
[auth]
handler = "allow-all"
"""

BASIC = base64.b64encode(b"dev1:pw1").decode()


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoTarget]:
    target = EchoTarget()
    yield target
    target.stop()


@pytest.fixture(scope="module")
def pki(dev_pki: Path) -> Path:
    return dev_pki  # the session's dev PKI (conftest); these tests only read it


@pytest.fixture(scope="module")
def gw(
    broker: Mosquitto, echo: EchoTarget, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    silent = SilentTarget()
    config = CONFIG.format(
        echo=echo.port,
        dead=free_port(),
        silent=silent.port,
        pki=pki,
        broker=broker.port,
        uid=uuid.uuid4().hex[:6],
    )
    gateway = GatewayProcess(tmp_path_factory.mktemp("http-gw"), config, ports=6)
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    silent.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def url(gw: GatewayProcess, path: str, listener: int = 0) -> str:
    return f"http://127.0.0.1:{gw.ports[listener]}{path}"


# -- reverse proxy ---------------------------------------------------------------------------------------


def test_basic_auth_forwards_to_the_target(gw: GatewayProcess) -> None:
    r = curl(url(gw, "/api/dev1/temp?x=1&y=%20z"), "-u", "dev1:pw1", "-H", "X-Thing: 7", data=b"hello")
    assert r.status == 200
    seen = r.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/up/dev1/temp"  # the prefix replaced by the target's path
    assert seen["query"] == "x=1&y=%20z"
    assert seen["body"] == "hello"
    assert seen["headers"]["x-thing"] == "7"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["host"].endswith(":" + seen["headers"]["host"].rsplit(":", 1)[1])
    assert "connection" not in seen["headers"]


def test_authorization_query_parameter_is_used_and_removed(gw: GatewayProcess) -> None:
    token = f"Basic%20{BASIC}"
    r = curl(url(gw, f"/api/dev1/q?a=1&authorization={token}&b=2"))
    assert r.status == 200
    assert r.json()["query"] == "a=1&b=2"
    assert curl(url(gw, "/api/dev1/q?authorization=Basic%20eDp5")).status == 401  # x:y


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ([], "credentials required"),
        (["-u", "dev1:wrong"], "credentials refused"),
        (["-H", "Authorization: Basic @@"], ""),
    ],
)
def test_missing_or_refused_credentials_are_401(gw: GatewayProcess, args: list[str], why: str) -> None:
    r = curl(url(gw, "/api/dev1/x"), *args)
    assert r.status == 401
    assert r.header("content-type") == "application/json"
    assert why in r.json()["error"]
    assert any(v.startswith("Basic") for v in r.headers["www-authenticate"])


def test_topic_outside_the_grant_is_403(gw: GatewayProcess) -> None:
    r = curl(url(gw, "/api/dev2/x"), "-u", "dev1:pw1")
    assert (r.status, r.json()) == (403, {"error": "not allowed: dev2/x"})


def test_path_outside_the_prefix_is_404(gw: GatewayProcess) -> None:
    r = curl(url(gw, "/other/dev1/x"), "-u", "dev1:pw1")
    assert (r.status, r.json()) == (404, {"error": "not found"})


@pytest.mark.parametrize("path", ["/api/dev1/%2B/x", "/api/dev1/%23", "/api/", "/api/dev1/../dev2"])
def test_bad_topic_or_path_is_400(gw: GatewayProcess, path: str) -> None:
    r = curl(url(gw, path), "-u", "dev1:pw1", "--path-as-is")
    assert r.status == 400
    assert r.json()["error"]


def test_body_over_max_packet_size_is_413(gw: GatewayProcess) -> None:
    assert curl(url(gw, "/api/dev1/big"), "-u", "dev1:pw1", data=b"x" * 1024).status == 200
    r = curl(url(gw, "/api/dev1/big"), "-u", "dev1:pw1", data=b"x" * 1025)
    assert (r.status, r.header("connection")) == (413, "close")
    chunked = curl(
        url(gw, "/api/dev1/big"), "-u", "dev1:pw1", "-H", "Transfer-Encoding: chunked", data=b"x" * 5000
    )
    assert chunked.status == 413


def test_unreachable_and_silent_targets_are_502(gw: GatewayProcess) -> None:
    r = curl(url(gw, "/dev1/x", 1), "-u", "dev1:pw1")
    assert r.status == 502 and "unreachable" in r.json()["error"]
    r = curl(url(gw, "/dev1/x", 2), "-u", "dev1:pw1")
    assert r.status == 502 and "did not answer within 1.0s" in r.json()["error"]


def test_bypass_paths_need_no_credentials(gw: GatewayProcess) -> None:
    r = curl(url(gw, "/health"))
    assert r.status == 200 and r.json()["path"] == "/up/health"  # outside the prefix: sent whole
    r = curl(url(gw, "/api/public/info"))
    assert r.status == 200 and r.json()["path"] == "/up/public/info"
    assert curl(url(gw, "/healthz")).status == 404  # a prefix on a segment boundary, not a string prefix


def test_target_status_and_streamed_body_pass_through(gw: GatewayProcess) -> None:
    assert curl(url(gw, "/api/dev1/status/418"), "-u", "dev1:pw1").status == 418
    r = curl(url(gw, "/api/dev1/bytes/300000"), "-u", "dev1:pw1")
    assert r.status == 200 and r.body == b"x" * 300000 and r.header("transfer-encoding") == "chunked"


def test_keep_alive_serves_several_requests_on_one_connection(gw: GatewayProcess) -> None:
    out = subprocess.run(
        ["curl", "-s", "-u", "dev1:pw1", "-w", "%{http_code} %{num_connects}\\n"]
        + [a for i in range(4) for a in ("-o", "/dev/null", url(gw, f"/api/dev1/k{i}"))]
        + ["-o", "/dev/null", url(gw, "/api/dev2/refused")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.stdout.split("\n")[:5] == ["200 1", "200 0", "200 0", "200 0", "403 0"]


def test_bearer_tokens_reach_the_handlers(gateway_factory: Any, echo: EchoTarget) -> None:
    open_gw: GatewayProcess = gateway_factory(OPEN_CONFIG.format(echo=echo.port))
    r = curl(f"http://127.0.0.1:{open_gw.port}/api/any/topic", "-H", "Authorization: Bearer tok-123")
    assert r.status == 200
    r = curl(f"http://127.0.0.1:{open_gw.port}/api/any/topic?authorization=tok-456")
    assert r.status == 200 and r.json()["query"] == ""
    assert curl(f"http://127.0.0.1:{open_gw.port}/api/$SYS/x", "-H", "Authorization: Bearer t").status == 403
    assert curl(f"http://127.0.0.1:{open_gw.port}/api/any/topic").status == 401


# -- TLS -------------------------------------------------------------------------------------------------


def test_tls_listener(gw: GatewayProcess, pki: Path) -> None:
    r = curl(f"https://localhost:{gw.ports[4]}/dev1/x", "-u", "dev1:pw1", *pki_args(pki))
    assert r.status == 200 and r.json()["path"] == "/dev1/x"
    assert r.json()["headers"]["x-forwarded-proto"] == "https"
    with pytest.raises(CurlFailed):
        curl(f"http://127.0.0.1:{gw.ports[4]}/dev1/x", "-u", "dev1:pw1", timeout=10)


def test_mtls_needs_a_client_certificate(gw: GatewayProcess, pki: Path) -> None:
    r = curl(f"https://localhost:{gw.ports[5]}/dev1/x", "-u", "dev1:pw1", *pki_args(pki, "client"))
    assert r.status == 200
    with pytest.raises(CurlFailed):
        curl(f"https://localhost:{gw.ports[5]}/dev1/x", "-u", "dev1:pw1", *pki_args(pki))
    with pytest.raises(CurlFailed):
        curl(f"https://localhost:{gw.ports[5]}/dev1/x", "-u", "dev1:pw1", *pki_args(pki, "client-unknown"))
    assert "TLS handshake with" in gw.stderr()


# -- publish mode ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("qos", "retain"), [("0", "0"), ("1", "0"), ("2", "1")])
def test_publish_reaches_mosquitto_sub_with_its_qos(
    gw: GatewayProcess, broker: Mosquitto, qos: str, retain: str
) -> None:
    topic = f"dev1/{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, topic).start()
    r = curl(
        url(gw, f"/pub/{topic}", 3),
        "-u",
        "dev1:pw1",
        "-H",
        f"X-MQTT-QoS: {qos}",
        "-H",
        f"X-MQTT-Retain: {retain}",
        data=b"payload 1",
    )
    assert r.status == 202
    assert r.json() == {"topic": topic, "qos": int(qos), "retain": retain == "1"}
    # mosquitto_sub (QoS 2) gets it at the publish's QoS; a live subscriber sees retain 0 (MQTT 3.3.1.3)
    assert sub.messages() == [f"{qos} 0 {topic} payload 1"]
    if retain == "1":  # a late subscriber gets the retained message
        late = Subscriber(broker.port, topic).start()
        assert late.messages() == [f"{qos} 1 {topic} payload 1"]
        curl(url(gw, f"/pub/{topic}", 3), "-u", "dev1:pw1", "-H", "X-MQTT-Retain: 1", data=b"")  # clears it


def test_publish_default_qos_and_refusals(gw: GatewayProcess, broker: Mosquitto) -> None:
    topic = f"dev1/{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, topic).start()
    r = curl(url(gw, f"/pub/{topic}?authorization=Basic%20{BASIC}", 3), data=b"by default")
    assert (r.status, r.json()["qos"]) == (202, 1)
    assert sub.messages() == [f"1 0 {topic} by default"]
    auth = ["-u", "dev1:pw1"]
    assert curl(url(gw, f"/pub/{topic}", 3), *auth).status == 405
    assert curl(url(gw, f"/pub/{topic}", 3), *auth, "-H", "X-MQTT-QoS: 3", data=b"x").status == 400
    assert curl(url(gw, f"/pub/{topic}", 3), *auth, "-H", "X-MQTT-Retain: maybe", data=b"x").status == 400
    assert curl(url(gw, "/pub/dev2/x", 3), *auth, data=b"x").status == 403
    assert curl(url(gw, f"/pub/{topic}", 3), data=b"x").status == 401
    assert curl(url(gw, f"/pub/{topic}", 3), *auth, data=b"x" * 1025).status == 413
    assert curl(url(gw, "/elsewhere/x", 3), *auth, data=b"x").status == 404


def test_publish_mode_without_the_bridge_fails_clearly(tmp_path: Path) -> None:
    config = tmp_path / "f.toml"
    config.write_text(
        f'[metrics]\naddress = ""\n[[listener]]\nname = "pub"\nprotocol = "http"\n'
        f'address = "127.0.0.1:{free_port()}"\ntarget = "mqtt"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "ferryman", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "[bridge.mqtt]" in out.stderr and "Traceback" not in out.stderr


def test_requests_are_counted_by_status(gw: GatewayProcess) -> None:
    curl(url(gw, "/api/dev1/m"), "-u", "dev1:pw1")
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'ferryman_http_requests_total{listener="web",status="200"}' in text
    assert 'ferryman_http_requests_total{listener="web",status="401"}' in text


def test_shutdown_closes_idle_keep_alive_connections(gateway_factory: Any, echo: EchoTarget) -> None:
    # A shutdown_timeout far beyond stop()'s 15 s wait: were the idle connection waited for, the gateway
    # would be killed and stop() would return a non-zero code (no duration is asserted: CI is noisy).
    open_gw: GatewayProcess = gateway_factory("shutdown_timeout = 120\n" + OPEN_CONFIG.format(echo=echo.port))
    sock = socket.create_connection(("127.0.0.1", open_gw.port), timeout=10)
    sock.sendall(b"GET /api/a/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    rc, err = open_gw.stop()  # the idle keep-alive connection must not hold the shutdown up
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert sock.recv(100) == b""  # closed by the gateway
    sock.close()


def test_head_response_has_no_body_and_keeps_the_connection(gw: GatewayProcess) -> None:
    auth = f"Authorization: Basic {BASIC}\r\n"
    with socket.create_connection(("127.0.0.1", gw.ports[0]), timeout=10) as sock:
        sock.sendall(f"HEAD /api/dev1/h HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        sock.sendall(f"GET /api/dev1/status/204 HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        data = b""
        while data.count(b"\r\n\r\n") < 2:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        time.sleep(0.2)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            data += sock.recv(65536)
    first, second = data.split(b"\r\n\r\n")[:2]
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 204")
    assert b"Content-Length: 0" not in first  # HEAD: the length a GET would get, from the target
    assert data.endswith(b"\r\n\r\n")  # no body bytes after either head
