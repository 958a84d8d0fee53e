"""The mqtt-ws listener under attack, from outside with raw sockets (issue 11): a ping flood before CONNECT,
slow and silent connections in every phase (TCP accepted, HTTP upgrade head, upgraded without CONNECT,
connected but only pinging), client mistakes in the handshake answered 4xx with one log line, and close
frames answered with the codes RFC 6455 section 7.4 gives."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import gevent
import pytest

from ferryman.protocols.mqtt.packets import Disconnect, Pingreq, Pingresp
from tests.fuzz_live import LogWatch, metric
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, uid
from tests.ws_fuzz import (
    FLOOD_ATTACKER,
    INVALID_CLOSE_CODES,
    OP_PING,
    OP_PONG,
    VALID_CLOSE_CODES,
    RawWs,
    binary,
    close_frame,
    frame,
    http_exchange,
    mqtt_connect,
    request_head,
)

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{metrics_port}"

[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "127.0.0.1:{port0}"
target = "tcp://127.0.0.1:{broker}"
path_prefix = "/mqtt"
connect_timeout = 1.0
keepalive_factor = 1.0

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port1}"
target = "tcp://127.0.0.1:{broker}"

[[listener]]
name = "ws-origin"
protocol = "mqtt-ws"
address = "127.0.0.1:{port2}"
target = "tcp://127.0.0.1:{broker}"
path_prefix = "/mqtt"
allowed_origins = ["https://app.example"]

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
"""


@pytest.fixture(scope="module")
def gw(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("ws-hardening"), CONFIG, ports=3, fills={"broker": broker.port}
    )
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def closed_within(sock: socket.socket, limit: float) -> bool:
    """True when the gateway closes (or resets) the connection within ``limit`` seconds; what it sends
    meanwhile is read and dropped."""
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True


# ================================================================= defect 1: a ping flood before CONNECT


FLOODS = {
    "pings": frame(OP_PING, b""),
    "pings-with-payload": frame(OP_PING, b"p" * 125),
    "pongs": frame(OP_PONG, b""),
    "empty-binary-frames": frame(0x2, b""),
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_flood_before_connect_neither_freezes_others_nor_outlives_connect_timeout(
    gw: GatewayProcess, flood: str
) -> None:
    """An unauthenticated client floods pings (or other frames that carry no MQTT byte) right after the
    upgrade, reading what comes back. Meanwhile a client of the plain MQTT listener of the same gateway
    gets its PINGRESPs, and the attacker is cut off by connect_timeout (1 s here): before the fix the frame
    reader never yielded, the whole process froze for as long as the flood lasted and connect_timeout
    never fired."""
    attacker = subprocess.Popen(
        [sys.executable, "-c", FLOOD_ATTACKER, str(gw.ports[0]), "/mqtt", "12", FLOODS[flood].hex()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        gevent.sleep(0.5)  # the flood is under way
        good = RawClient(gw.ports[1], 4, timeout=5)
        assert good.connect(f"good-{uid()}", "dev1", "pw1").reason_code == 0
        for _ in range(10):
            good.send(Pingreq())
            assert isinstance(good.recv(timeout=5), Pingresp)  # 5 s: generous; frozen was 12 s
            gevent.sleep(0.1)
        good.disconnect()
        out, err = attacker.communicate(timeout=30)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    verdict = out.decode().split()
    assert verdict and verdict[0] == "cut", f"the attacker was never cut off: {out!r} {err!r}"
    assert float(verdict[1]) < 8, f"cut off only after {verdict[1]} s (connect_timeout 1 s)"


def test_ping_flood_after_connect_does_not_stall_another_ws_client(gw: GatewayProcess) -> None:
    """The same flood from an authenticated client: the other WebSocket clients keep their round trips."""
    flooder = RawWs(gw.ports[0])
    other = RawWs(gw.ports[0])
    try:
        flooder.send(binary(mqtt_connect(f"fl-{uid()}")))
        other.send(binary(mqtt_connect(f"ot-{uid()}")))
        assert flooder.read(0.5) is False and other.read(0.5) is False
        pings = frame(OP_PING, b"x") * 5000
        done = False

        def flood() -> None:
            while not done and flooder.send(pings):
                flooder.read(0.001)

        job = gevent.spawn(flood)
        try:
            for _ in range(10):
                before = len(other.binary_payload())
                other.send(binary(bytes((0xC0, 0))))
                deadline = time.monotonic() + 5
                while len(other.binary_payload()) < before + 2 and time.monotonic() < deadline:
                    other.read(0.05)
                assert len(other.binary_payload()) >= before + 2, "no PINGRESP within 5 s"
        finally:
            done = True
            job.join(timeout=5)
        assert any(op == OP_PONG for op, _ in flooder.frames)
    finally:
        flooder.close()
        other.close()


# ================================================================ defect 5: a deadline on every phase


def test_silent_tcp_connection_is_closed_before_any_http(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.ports[0])) as s:
        assert closed_within(s, 6), "a connection that sent nothing was kept"


def test_slowloris_upgrade_request_is_cut_off(gw: GatewayProcess) -> None:
    """One byte of the upgrade request every 0.2 s (the whole head would take a minute): the deadline is on
    the head, not on each read."""
    head = request_head(gw.ports[0])
    with socket.create_connection(("127.0.0.1", gw.ports[0])) as s:
        s.settimeout(1)
        started = time.monotonic()
        cut = False
        for byte in head:
            try:
                s.sendall(bytes((byte,)))
            except OSError:
                cut = True
                break
            if closed_within(s, 0.2):
                cut = True
                break
            if time.monotonic() - started > 10:
                break
        assert cut, "a slow upgrade request was kept for 10 s (connect_timeout is 1 s)"


def test_upgraded_but_silent_is_closed_by_connect_timeout(gw: GatewayProcess) -> None:
    ws = RawWs(gw.ports[0])
    try:
        assert ws.read(6), "upgraded, no CONNECT, still open after 6 s (connect_timeout 1 s)"
    finally:
        ws.close()


def test_slow_pings_after_upgrade_do_not_postpone_connect_timeout(gw: GatewayProcess) -> None:
    ws = RawWs(gw.ports[0])
    try:
        for _ in range(30):
            if not ws.send(frame(OP_PING, b"")) or ws.read(0.2):
                break
        assert ws.eof, "pings kept a connection without CONNECT open for 6 s"
    finally:
        ws.close()


def test_ws_pings_are_not_mqtt_keepalive(gw: GatewayProcess) -> None:
    """Keepalive 1 s (factor 1.0): WebSocket pings every 0.2 s are not MQTT control packets (MQTT 5
    3.1.2.10), so the client is disconnected with 0x8D all the same."""
    from ferryman.protocols.mqtt import codec

    ws = RawWs(gw.ports[0])
    try:
        ws.send(binary(mqtt_connect(f"ka-{uid()}", version=5, keepalive=1)))
        for _ in range(40):
            if not ws.send(frame(OP_PING, b"")) or ws.read(0.2):
                break
        assert ws.eof, "pings kept an MQTT-silent connection open for 8 s (keepalive 1 s)"
        payload = ws.binary_payload()
        assert payload[:1] == b"\x20"  # the CONNACK
        rest = payload[2 + payload[1] :]
        packet = codec.decode(rest[0], rest[2 : 2 + rest[1]], 5)
        assert isinstance(packet, Disconnect) and packet.reason_code == 0x8D
        assert ws.close_code() == 1000
    finally:
        ws.close()


def test_mqtt_traffic_keeps_a_ws_connection_alive(gw: GatewayProcess) -> None:
    ws = RawWs(gw.ports[0])
    try:
        ws.send(binary(mqtt_connect(f"ok-{uid()}", keepalive=1)))
        for _ in range(12):  # 2.4 s, over twice the keepalive
            assert ws.send(binary(bytes((0xC0, 0))))
            assert not ws.read(0.2)
        assert ws.binary_payload().count(b"\xd0\x00") >= 10  # the PINGRESPs
    finally:
        ws.close()


# ================================================================== defect 12: client mistakes are 4xx


def _bad_requests(port: int) -> dict[str, tuple[bytes, int]]:
    long_line = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n"
    many = b"GET /mqtt HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n"
    return {
        "key-not-base64": (request_head(port, Sec_WebSocket_Key="!!!not base64!!!"), 400),
        "key-15-bytes": (request_head(port, Sec_WebSocket_Key="AAAAAAAAAAAAAAAAAAAA"), 400),
        "key-17-bytes": (request_head(port, Sec_WebSocket_Key="AAAAAAAAAAAAAAAAAAAAAAA="), 400),
        "key-missing": (request_head(port, Sec_WebSocket_Key=""), 400),
        "key-non-ascii": (request_head(port, Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ==\xe9"), 400),
        "version-8": (request_head(port, Sec_WebSocket_Version="8"), 426),
        "version-garbage": (request_head(port, Sec_WebSocket_Version="13x"), 426),
        "version-missing": (request_head(port, Sec_WebSocket_Version=""), 426),
        "connection-without-upgrade": (request_head(port, Connection="keep-alive"), 400),
        "host-missing": (request_head(port, Host=""), 400),
        "http-1.0": (request_head(port).replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400),
        "body-on-upgrade": (request_head(port, Content_Length="5")[:-2] + b"\r\nhello", 400),
        "chunked-upgrade": (request_head(port, Transfer_Encoding="chunked"), 400),
        "garbage-request-line": (b"\x00\x01\x02 \xff\r\n\r\n", 400),
        "bad-http-version": (b"GET /mqtt HTTP/9.x\r\nHost: x\r\n\r\n", 400),
        "header-line-too-long": (long_line, 400),
        "too-many-headers": (many, 400),
        "request-line-too-long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        "post-upgrade": (request_head(port).replace(b"GET", b"POST", 1), 426),
        "no-subprotocol": (request_head(port, Sec_WebSocket_Protocol=""), 400),
    }


BAD = sorted(_bad_requests(0))


@pytest.mark.parametrize("name", BAD)
def test_handshake_mistakes_are_4xx_with_one_log_line(gw: GatewayProcess, name: str) -> None:
    log = LogWatch(gw.stderr)
    raw, expected = _bad_requests(gw.ports[0])[name]
    status, headers, _ = http_exchange(gw.ports[0], raw)
    assert status == expected, f"{name}: HTTP {status}, expected {expected}"
    if expected == 426:
        assert headers.get("upgrade", "").lower() == "websocket"
    if name.startswith("version"):
        assert headers.get("sec-websocket-version") == "13"
    time.sleep(0.2)
    new = log.new()
    assert "Traceback" not in new, new
    assert " ERROR " not in new and "| ERROR" not in new, new
    assert len([ln for ln in new.splitlines() if "mqtt-ws ws: refused" in ln]) == 1, new


def test_origin_refusal_is_403_without_traceback(gw: GatewayProcess) -> None:
    log = LogWatch(gw.stderr)
    status, _, body = http_exchange(gw.ports[2], request_head(gw.ports[2], Origin="https://evil.example"))
    assert status == 403 and b"evil.example" in body
    time.sleep(0.2)
    assert "Traceback" not in log.new()


def test_handshake_refusals_are_counted(gw: GatewayProcess) -> None:
    before = metric(gw.metrics_port, 'ferryman_refusals_total{listener="ws",reason="websocket_handshake"}')
    http_exchange(gw.ports[0], request_head(gw.ports[0], Sec_WebSocket_Key="nope"))
    after = metric(gw.metrics_port, 'ferryman_refusals_total{listener="ws",reason="websocket_handshake"}')
    assert after == before + 1


# ==================================================================== defect 13: close codes (RFC 6455)


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
def test_invalid_close_code_is_answered_1002(gw: GatewayProcess, code: int) -> None:
    ws = RawWs(gw.ports[0])
    try:
        ws.send(close_frame(code))
        assert ws.until_close() == 1002
    finally:
        ws.close()


def test_one_byte_close_payload_is_answered_1002(gw: GatewayProcess) -> None:
    ws = RawWs(gw.ports[0])
    try:
        ws.send(frame(0x8, b"\x03"))
        assert ws.until_close() == 1002
    finally:
        ws.close()


@pytest.mark.parametrize("reason", [b"\xc3\x28", b"\xed\xa0\x80", b"ok \xe2\x82", b"\xff"])
def test_close_reason_not_utf8_is_answered_1007(gw: GatewayProcess, reason: bytes) -> None:
    ws = RawWs(gw.ports[0])
    try:
        ws.send(close_frame(1000, reason))
        assert ws.until_close() == 1007
    finally:
        ws.close()


@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
def test_valid_close_code_is_echoed(gw: GatewayProcess, code: int) -> None:
    ws = RawWs(gw.ports[0])
    try:
        ws.send(close_frame(code, "café".encode()))
        assert ws.until_close() == code
    finally:
        ws.close()


def test_close_without_code_is_answered_1000(gw: GatewayProcess) -> None:
    ws = RawWs(gw.ports[0])
    try:
        ws.send(close_frame(None))
        assert ws.until_close() == 1000
    finally:
        ws.close()
