"""The PROXY protocol (v1 and v2) on an MQTT listener behind a load balancer (``proxy_protocol = true``,
``trusted_proxies``), against a real mosquitto: the header's address is the session's (per-IP limits and
the log lines key on it), an untrusted source and a connection without a header are closed without a
byte, a v2 LOCAL header (a balancer's health check) works; and ``target_proxy_protocol`` sends the
device's address on to the target."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ferryman.protocols.proxy_protocol import ProxyHeader, encode_v1, encode_v2, read_header
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, free_port, uid, wait_port

CONFIG = """
[metrics]
address = "127.0.0.1:{{metrics_port}}"
[[listener]]
name = "lb"
protocol = "mqtt"
address = "127.0.0.1:{{port}}"
target = "tcp://127.0.0.1:{target}"
proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]
{extra}
[auth]
handler = "allow-all"
"""


def _client(gw: GatewayProcess, header: bytes, source: str = "127.0.0.1") -> RawClient:
    client = RawClient(gw.port, 5, source=source)
    client.send_raw(header)
    return client


def _proxy_refusals(gw: GatewayProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    found = re.search(r'ferryman_refusals_total\{listener="lb",reason="proxy_protocol"\} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


def _closed_without_a_byte(client: RawClient) -> bool:
    client.sock.settimeout(5.0)
    try:
        return client.sock.recv(100) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("encode", [encode_v1, encode_v2], ids=["v1", "v2"])
def test_the_header_address_is_the_sessions(
    gateway_factory: object, broker: Mosquitto, encode: object
) -> None:
    gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
        CONFIG.format(target=broker.port, extra="max_connections_per_ip = 1")
    )
    a = ("203.0.113.7", 40001)
    dst = ("127.0.0.1", gw.port)
    first = _client(gw, encode(a, dst))  # type: ignore[operator]
    assert first.connect(uid()).reason_code == 0
    # Every connection comes from 127.0.0.1: the per-IP limit keys on the address in the header.
    second = _client(gw, encode((a[0], 40002), dst))  # type: ignore[operator]
    assert second.connect(uid()).reason_code == 0x97
    assert second.closed_within(3)
    assert "203.0.113.7 at max_connections_per_ip (1)" in gw.stderr()
    other = _client(gw, encode(("2001:db8::5", 40003), ("::1", gw.port)))  # type: ignore[operator]
    assert other.connect(uid()).reason_code == 0
    first.disconnect()
    other.disconnect()


def test_untrusted_source_and_missing_header_are_closed(gateway_factory: object, broker: Mosquitto) -> None:
    gw: GatewayProcess = gateway_factory(CONFIG.format(target=broker.port, extra=""))  # type: ignore[operator]
    header = encode_v2(("203.0.113.7", 40001), ("127.0.0.1", gw.port))
    before = _proxy_refusals(gw)  # the readiness probe of the test harness sends no header either
    untrusted = _client(gw, header, source="127.0.0.2")
    assert _closed_without_a_byte(untrusted)
    bare = RawClient(gw.port, 5)  # a CONNECT with no header first
    bare.send_raw(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc")
    assert _closed_without_a_byte(bare)
    stderr = gw.stderr()
    assert "127.0.0.2 is not in trusted_proxies" in stderr
    assert "no PROXY header" in stderr
    assert _proxy_refusals(gw) == before + 2
    # and the listener still serves a proper one
    good = _client(gw, header)
    assert good.connect(uid()).reason_code == 0
    good.disconnect()


TLS_CONFIG = """
[[listener]]
name = "lb-tls"
protocol = "mqtt"
address = "127.0.0.1:{{port}}"
target = "tcp://127.0.0.1:{target}"
proxy_protocol = true
trusted_proxies = ["127.0.0.0/8"]
max_connections_per_ip = 1
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
[auth]
handler = "allow-all"
"""


def test_header_comes_before_the_tls_handshake(
    gateway_factory: object, broker: Mosquitto, dev_pki: Path
) -> None:
    gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
        TLS_CONFIG.format(target=broker.port, pki=dev_pki)
    )
    context = ssl.create_default_context(cafile=str(dev_pki / "ca.crt"))

    def over_tls(encode: Any, sport: int) -> RawClient:
        client = _client(gw, encode(("203.0.113.7", sport), ("127.0.0.1", gw.port)), source="127.0.0.9")
        client.sock = context.wrap_socket(client.sock, server_hostname="localhost")
        return client

    first = over_tls(encode_v2, 1000)
    assert first.connect(uid()).reason_code == 0
    second = over_tls(encode_v1, 1001)
    assert second.connect(uid()).reason_code == 0x97  # keyed on the header's address, over TLS too
    assert "203.0.113.7 at max_connections_per_ip (1)" in gw.stderr()
    first.disconnect()


def test_v2_local_health_check(gateway_factory: object, broker: Mosquitto) -> None:
    gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
        CONFIG.format(target=broker.port, extra="max_connections_per_ip = 1")
    )
    check = _client(gw, encode_v2(None, None))
    assert check.connect(uid()).reason_code == 0
    # LOCAL: the balancer's own address (127.0.0.1) is the one counted
    again = _client(gw, encode_v2(None, None))
    assert again.connect(uid()).reason_code == 0x97
    assert "127.0.0.1 at max_connections_per_ip (1)" in gw.stderr()
    check.disconnect()


WS_HTTP_CONFIG = """
[log]
level = "debug"
[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "127.0.0.1:{{port0}}"
target = "tcp://127.0.0.1:{broker}"
path_prefix = "/mqtt"
proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]
[[listener]]
name = "web"
protocol = "http"
address = "127.0.0.1:{{port1}}"
target = "http://127.0.0.1:{broker}"
proxy_protocol = true
trusted_proxies = ["127.0.0.1"]
[auth]
handler = "allow-all"
"""


def _raw(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """``data`` sent from ``source``; everything the gateway answered until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0, source_address=(source, 0)) as sock:
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return got


def test_websocket_and_http_listeners(gateway_factory: object, broker: Mosquitto) -> None:
    gw: GatewayProcess = gateway_factory(WS_HTTP_CONFIG.format(broker=broker.port), ports=2)  # type: ignore[operator]
    ws, web = gw.ports
    header = encode_v1(("203.0.113.7", 40001), ("127.0.0.1", ws))
    answer = _raw(ws, header + b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404")
    assert "refused 203.0.113.7: 404" in gw.stderr()  # the address in the header, not 127.0.0.1
    assert _raw(ws, b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n") == b""  # no header: closed, no answer
    assert _raw(ws, header, source="127.0.0.2") == b""  # untrusted
    header = encode_v2(("203.0.113.8", 40002), ("127.0.0.1", web))
    assert _raw(web, header + b"BAD\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert "('203.0.113.8', 40002): refused 400" in gw.stderr()
    assert _raw(web, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert _raw(web, header, source="127.0.0.2") == b""
    stderr = gw.stderr()
    assert stderr.count("is not in trusted_proxies") == 2
    assert stderr.count("no PROXY header") == 2


class _ProxyTarget:
    """A target that reads the PROXY header the gateway sends, records it, and closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.headers: list[ProxyHeader] = []
        self.after: list[bytes] = []
        self.got = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            self.headers.append(read_header(conn, 5.0))
            conn.settimeout(5.0)
            self.after.append(conn.recv(1))  # what follows the header: a TLS ClientHello or the CONNECT
            self.got.set()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    ("version", "scheme", "first"), [(1, "tcp", b"\x10"), (2, "tcp", b"\x10"), (2, "tls", b"\x16")]
)
def test_target_proxy_protocol_sends_the_device_address(
    gateway_factory: object, version: int, scheme: str, first: bytes
) -> None:
    target = _ProxyTarget()
    try:
        gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
            CONFIG.format(target=target.port, extra=f"target_proxy_protocol = {version}").replace(
                "tcp://", f"{scheme}://"
            )
        )
        # The balancer in front says where the device connected to: that goes on, not the gateway's own.
        client = _client(gw, encode_v1(("198.51.100.9", 4242), ("203.0.113.7", 8883)))
        client.send_raw(b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc")
        assert target.got.wait(10)
        assert target.headers[0].version == version
        assert target.headers[0].source == ("198.51.100.9", 4242)
        assert target.headers[0].destination == ("203.0.113.7", 8883)
        assert target.after == [first]  # the header went first, before TLS on a tls:// target
        client.sock.close()
    finally:
        target.close()


HAPROXY = """
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{front}
    default_backend be
backend be
    server gw 127.0.0.1:{gw} send-proxy-v2 check inter 500ms
"""


def test_behind_real_haproxy(gateway_factory: object, broker: Mosquitto, tmp_path: Path) -> None:
    """HAProxy in TCP mode with send-proxy-v2 (and its health checks, v2 LOCAL) in front of the listener:
    the per-IP limit keys on the client's own address, which only the PROXY header carries."""
    gw: GatewayProcess = gateway_factory(  # type: ignore[operator]
        CONFIG.format(target=broker.port, extra="max_connections_per_ip = 1")
    )
    front = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY.format(front=front, gw=gw.port), encoding="utf-8")
    proc = subprocess.Popen(
        [str(shutil.which("haproxy")), "-db", "-f", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(front, timeout=10, proc=proc)
        first = RawClient(front, 5, source="127.0.0.5")
        assert first.connect(uid()).reason_code == 0
        second = RawClient(front, 5, source="127.0.0.5")
        assert second.connect(uid()).reason_code == 0x97
        assert "127.0.0.5 at max_connections_per_ip (1)" in gw.stderr()
        other = RawClient(front, 5, source="127.0.0.6")
        assert other.connect(uid()).reason_code == 0
        first.disconnect()
        other.disconnect()
    finally:
        proc.terminate()
        proc.wait(10)
