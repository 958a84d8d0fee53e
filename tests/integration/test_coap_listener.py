"""The ``coap`` listener itself: credentials parsing, settings it refuses (DTLS), garbage datagrams from many
source ports, and what an observer sees when the gateway stops."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from ferryman.protocols.coap.auth import INVALID, Credentials, action_of, credentials_of, without_auth
from ferryman.protocols.coap.listener import CoapListener
from ferryman.wiring import load_settings
from tests.servers import GatewayProcess, Mosquitto

CONFIG = """
shutdown_timeout = 3.0
[metrics]
address = "127.0.0.1:{{metrics_port}}"
[[listener]]
name = "coap"
protocol = "coap"
address = "127.0.0.1:{{port}}"
target = "mqtt"
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "coap-listener-{uid}"
"""


def _request(*query: str, code: Code = Code.POST, observe: int | None = None) -> aiocoap.Message:
    m = aiocoap.Message(code=code, uri_path=("dev1", "t"), uri_query=query)
    if observe is not None:
        m.opt.observe = observe
    return m


# -- units -----------------------------------------------------------------------------------------------


def test_credentials_from_the_auth_option() -> None:
    assert credentials_of(_request("auth=dev1:pw:1")) == Credentials("dev1", b"pw:1")
    assert credentials_of(_request("x=1", "auth=tok3n")) == Credentials(None, b"tok3n")  # a bare token
    assert credentials_of(_request("auth=")) is INVALID
    assert credentials_of(_request("x=1")) is None
    kept = without_auth(_request("a=1", "auth=dev1:pw1", "b=2"))
    assert kept.opt.uri_query == ("a=1", "b=2")
    assert kept.opt.uri_path == ("dev1", "t")


def test_actions() -> None:
    assert action_of(_request()) == "publish"
    assert action_of(_request(code=Code.DELETE)) == "publish"
    assert action_of(_request(code=Code.GET, observe=0)) == "subscribe"
    assert action_of(_request(code=Code.GET, observe=1)) == "unsubscribe"
    assert action_of(_request(code=Code.GET)) is None


def _settings(tmp_path: Path, extra: str, target: str = "mqtt") -> object:
    text = f"""
[[listener]]
name = "c"
protocol = "coap"
address = "127.0.0.1:5683"
target = "{target}"
{extra}
[bridge.mqtt]
url = "tcp://127.0.0.1:1883"
"""
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_settings(path).listeners[0]


def test_dtls_and_coaps_targets_are_refused_with_the_reason(tmp_path: Path, dev_pki: Path) -> None:
    tls = f'[listener.tls]\ncert_file = "{dev_pki}/server.crt"\nkey_file = "{dev_pki}/server.key"'
    # DTLS with certificates (test_coap_dtls_cert.py) and with pre-shared keys (test_coap_dtls.py)
    # are served, but not both on one listener.
    assert CoapListener.validate_settings(_settings(tmp_path, tls)) == []
    psk = '[listener.psk]\nsensor-17 = "0123456789abcdef"'
    assert CoapListener.validate_settings(_settings(tmp_path, psk)) == []
    problems = CoapListener.validate_settings(_settings(tmp_path, psk + "\n" + tls))
    assert len(problems) == 1 and "both [listener.tls] and [listener.psk] is not available" in problems[0]
    problems = CoapListener.validate_settings(_settings(tmp_path, "", target="coaps://127.0.0.1:5684"))
    assert any("coaps" in p for p in problems)
    assert CoapListener.validate_settings(_settings(tmp_path, "")) == []


# -- a gateway -------------------------------------------------------------------------------------------


@pytest.fixture
def gw(broker: Mosquitto, tmp_path: Path) -> Iterator[GatewayProcess]:
    config = CONFIG.format(broker=broker.port, uid=uuid.uuid4().hex[:6])
    gateway = GatewayProcess(tmp_path / "gw", config)
    gateway.ports = [gateway.metrics_port]  # UDP cannot be waited for; metrics come up after the listeners
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def _post(port: int, path: str) -> str:
    out = subprocess.run(
        ["coap-client-notls", "-B", "5", "-m", "post", "-e", "1", f"coap://127.0.0.1:{port}/{path}"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    return (out.stdout + out.stderr).strip()


def _uri(port: int, path: str) -> str:
    return f"coap://127.0.0.1:{port}/{path}"


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)", status)
    assert match is not None
    return int(match.group(1))


def test_garbage_from_many_ports_leaks_nothing_and_disturbs_no_one(gw: GatewayProcess) -> None:
    assert gw.proc is not None
    assert _post(gw.port, "dev1/a?auth=dev1:pw1") == ""  # 2.04: coap-client prints nothing
    rss_before = _rss_kib(gw.proc.pid)
    samples = [
        b"",  # empty datagram
        b"\xff" * 40,  # version 3
        b"\x40",  # truncated header
        b"\x48\x02\x00\x01abc",  # token longer than the datagram
        b"\x40\x02\x00\x01\xff",  # payload marker without payload
        b"\x40\x02\x00\x01\xf0",  # reserved option nibble
        b"\x50\x02\x00\x01",  # NON POST to the root, no credentials
        b"\x40\x01\x00\x02\xbddev1",  # CON GET without credentials
    ]
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(200)]
    try:
        for round_ in range(10):
            for i, s in enumerate(sockets):
                s.sendto(samples[(i + round_) % len(samples)] + os.urandom(i % 7), ("127.0.0.1", gw.port))
            # a good client in the middle of it all
            assert _post(gw.port, f"dev1/r{round_}?auth=dev1:pw1") == ""
    finally:
        for s in sockets:
            s.close()
    time.sleep(0.5)
    assert _post(gw.port, "dev1/b?auth=dev1:pw1") == ""
    assert _post(gw.port, "dev1/b").startswith("4.01")
    grown = _rss_kib(gw.proc.pid) - rss_before
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB after 2,000 garbage datagrams"


def test_stopping_ends_observations_with_503(gw: GatewayProcess) -> None:
    obs = subprocess.Popen(
        ["coap-client-notls", "-v", "7", "-s", "6", "-m", "get", _uri(gw.port, "dev1/%23?auth=dev1:pw1")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.5)
    rc, err = gw.stop()
    out, _ = obs.communicate(timeout=25)
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert re.search(r"c:5\.03 .*server shutting down", out), out[-2000:]


def _observe_request(mid: int, token: bytes, path: tuple[str, ...], query: str) -> bytes:
    """A CON GET with Observe 0 (option 6, empty), Uri-Path (11) and one Uri-Query (15)."""
    out = bytearray([0x40 | len(token), 0x01]) + mid.to_bytes(2, "big") + token
    out += bytes([0x60])  # Observe, delta 6, length 0
    delta = 5
    for segment in path:
        out += bytes([(delta << 4) | len(segment)]) + segment.encode()
        delta = 0
    out += bytes([(4 << 4) | 13, len(query) - 13]) + query.encode()
    return bytes(out)


def test_rst_to_a_notification_ends_the_observation(gw: GatewayProcess, broker: Mosquitto) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        s.sendto(_observe_request(7, b"tk", ("dev1", "rst"), "auth=dev1:pw1"), ("127.0.0.1", gw.port))
        ack = s.recv(1500)
        assert (ack[0] >> 4 & 3, ack[1], ack[2:4], ack[4:6]) == (2, 0x45, b"\x00\x07", b"tk")  # ACK 2.05
        deadline = time.monotonic() + 10
        while "subscribing dev1/rst" not in gw.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "dev1/rst", "-m", "n1"], check=True)
        note = s.recv(1500)
        assert note[1] == 0x45 and note[4:6] == b"tk" and note.endswith(b"n1")
        s.sendto(bytes([0x70, 0, note[2], note[3]]), ("127.0.0.1", gw.port))  # RST
        while "unsubscribing dev1/rst" not in gw.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "unsubscribing dev1/rst: its last CoAP observer left" in gw.stderr()
    finally:
        s.close()
