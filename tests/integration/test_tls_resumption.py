"""TLS session resumption (tickets) and EC certificates on real listeners: ``ferryman run`` with mqtt, mqtt-ws
and http TLS listeners on an EC P-256 development PKI (``write_dev_pki(key_type="ec")``), mosquitto behind.
Clients: Python's ``ssl`` with ``session=``, and ``openssl s_client -sess_out / -sess_in``,
``mosquitto_pub`` and ``mosquitto_sub`` as independent ones."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferryman.protocols.mqtt.packets import Connack, Publish
from ferryman.protocols.tls.tickets import TICKET_SECRET_ENV
from ferryman_devtools.pki import write_dev_pki
from ferryman_devtools.pki_extra import issue_client, revoke
from tests.http_support import EchoTarget
from tests.integration.test_workers import all_running, open_per_worker, wait_for
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto

OPENSSL = shutil.which("openssl")

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = ""

[[listener]]
name = "tls"
protocol = "mqtt"
address = "127.0.0.1:{{port0}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"

[[listener]]
name = "mtls-crl"
protocol = "mqtt"
address = "127.0.0.1:{{port1}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"
verify = ["crl"]
crl_file = "{pki}/crl.pem"
ticket_rotation = 7200.0

[[listener]]
name = "no-tickets"
protocol = "mqtt"
address = "127.0.0.1:{{port2}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
session_tickets = false

[[listener]]
name = "wss"
protocol = "mqtt-ws"
address = "127.0.0.1:{{port3}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"

[[listener]]
name = "https"
protocol = "http"
address = "127.0.0.1:{{port4}}"
target = "http://127.0.0.1:{echo}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["tickets/#"]
subscribe = ["tickets/#"]
[[auth.users]]
username = "device"
identity = "client-resume"
publish = ["tickets/#"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ec-pki")
    write_dev_pki(directory, key_type="ec")
    issue_client(directory, "client-resume")
    directory.chmod(0o755)
    return directory


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoTarget]:
    target = EchoTarget()
    yield target
    target.stop()


@pytest.fixture(scope="module")
def gw(
    broker: Mosquitto, pki: Path, echo: EchoTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = CONFIG.format(broker=broker.port, pki=pki, echo=echo.port)
    gateway = GatewayProcess(tmp_path_factory.mktemp("tickets-gw"), config, ports=5)
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, err[-3000:]


def client_context(pki: Path, cert: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    return ctx


def logged(gw: GatewayProcess, text: str, timeout: float = 5.0) -> bool:
    """True once ``text`` is in the gateway's log (it is written just after the refused socket closes)."""
    deadline = time.monotonic() + timeout
    while text not in gw.stderr():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def mqtt_connect(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None, **login: Any
) -> tuple[bool, ssl.SSLSession | None]:
    """TLS (resuming ``session`` when given), CONNECT, CONNACK 0, DISCONNECT: (resumed?, the new session)."""
    c = RawClient(port)
    c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost", session=session)
    try:
        connack = c.connect(f"t-{uuid.uuid4().hex[:8]}", **(login or {"username": "dev1", "password": "pw1"}))
        assert isinstance(connack, Connack) and connack.reason_code == 0
        reused = c.sock.session_reused  # type: ignore[attr-defined]
        new = c.sock.session  # type: ignore[attr-defined]  # the ticket came with or before the CONNACK
        c.disconnect()
        return reused, new
    finally:
        c.close()


def http_exchange(
    port: int, ctx: ssl.SSLContext, request: bytes, session: ssl.SSLSession | None = None
) -> tuple[bool, ssl.SSLSession | None, bytes]:
    """TLS (resuming ``session``), one request, the first bytes of the answer."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(request)
        head = tls.recv(64)
        return tls.session_reused, tls.session, head


def test_mqtt_listener_resumes_with_a_ticket(gw: GatewayProcess, pki: Path) -> None:
    ctx = client_context(pki)
    reused, session = mqtt_connect(gw.ports[0], ctx)
    assert not reused and session is not None and session.has_ticket
    for _ in range(3):  # a ticket per connection: each resumed connection hands out the next one
        reused, session = mqtt_connect(gw.ports[0], ctx, session)
        assert reused


def test_session_tickets_false_means_full_handshakes(gw: GatewayProcess, pki: Path) -> None:
    ctx = client_context(pki)
    _, session = mqtt_connect(gw.ports[2], ctx)
    assert session is not None and not session.has_ticket
    reused, _ = mqtt_connect(gw.ports[2], ctx, session)
    assert not reused


def test_ws_and_http_listeners_resume(gw: GatewayProcess, pki: Path) -> None:
    ctx = client_context(pki)
    upgrade = (
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    get = b"GET /anything HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    for port, request, answer in ((gw.ports[3], upgrade, b"HTTP/1.1 101"), (gw.ports[4], get, b"HTTP/1.1 ")):
        reused, session, head = http_exchange(port, ctx, request)
        assert not reused and head.startswith(answer), head
        reused, _, head = http_exchange(port, ctx, request, session)
        assert reused and head.startswith(answer), head


def test_a_ticket_is_good_only_where_the_tls_settings_are_the_same(gw: GatewayProcess, pki: Path) -> None:
    ctx = client_context(pki, "client-resume")  # the same client context for both listeners
    _, plain = mqtt_connect(gw.ports[0], ctx)
    # a session of the plain TLS listener (no client certificate asked) does not open the mTLS one: a full
    # handshake, in which the certificate is asked for and checked
    reused, mutual = mqtt_connect(gw.ports[1], ctx, plain, username="device")
    assert not reused and mutual is not None
    reused, _ = mqtt_connect(gw.ports[0], ctx, mutual)
    assert not reused
    # the mqtt-ws listener has the same [listener.tls] as the plain mqtt one: its tickets are good there
    reused, _, _ = http_exchange(gw.ports[3], ctx, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", plain)
    assert reused


def test_mtls_resumption_keeps_identity_and_still_checks_revocation(
    gw: GatewayProcess, broker: Mosquitto, pki: Path
) -> None:
    ctx = client_context(pki, "client-resume")
    reused, session = mqtt_connect(gw.ports[1], ctx, username="device")
    assert not reused
    # resumed: no certificate is sent, but the session's is the identity (user "device" has no password,
    # it logs in by identity = "client-resume")
    w = RawClient(broker.port)
    assert w.connect(f"w-{uuid.uuid4().hex[:6]}").reason_code == 0
    w.subscribe("tickets/#", qos=1)
    c = RawClient(gw.ports[1])
    c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost", session=session)
    assert c.connect("resumed-device", username="device").reason_code == 0
    assert c.sock.session_reused  # type: ignore[attr-defined]
    c.publish("tickets/resumed", b"by identity", qos=1)
    assert w.expect(Publish).payload == b"by identity"
    session = c.sock.session  # type: ignore[attr-defined]
    c.disconnect()
    c.close()
    w.close()
    # revoked after its session was made: the resumed connection is refused by the CRL check
    revoke(pki, "client-resume.crt")
    try:
        c = RawClient(gw.ports[1])
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost", session=session)
        assert c.sock.session_reused  # type: ignore[attr-defined]  # OpenSSL resumed; the gateway refuses
        assert c.closed_within(5)
        c.close()
        assert logged(gw, "client certificate revoked (CRL)")
    finally:
        revoke(pki, "client-resume.crt", revoked=False)


needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")


@needs_openssl
def test_openssl_s_client_resumes_and_sees_an_ecdsa_certificate(
    gw: GatewayProcess, pki: Path, tmp_path: Path
) -> None:
    assert OPENSSL is not None
    # CONNECT (MQTT 3.1.1, dev1 / pw1) then DISCONNECT: the gateway answers CONNACK, then closes
    name = b"s-client"
    body = b"\x00\x04MQTT\x04\xc2\x00\x3c" + len(name).to_bytes(2, "big") + name
    body += b"\x00\x04dev1\x00\x03pw1"
    stdin = b"\x10" + bytes([len(body)]) + body + b"\xe0\x00"
    sess = tmp_path / "session.pem"

    def s_client(*extra: str) -> str:
        args = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{gw.ports[0]}", "-servername", "localhost"]
        args += ["-CAfile", str(pki / "ca.crt"), "-verify_return_error", "-ign_eof", *extra]
        # the gateway closes the TCP connection after DISCONNECT without a TLS close_notify: s_client
        # reports "unexpected eof" (exit code 1) after its output, which is what is checked
        out = subprocess.run(args, input=stdin, capture_output=True, timeout=20)
        text = out.stdout.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in text, text + out.stderr.decode(errors="replace")
        return text

    first = s_client("-sess_out", str(sess))
    assert "New, TLSv1.3" in first
    assert "Peer signature type: ECDSA" in first and "Server public key is 256 bit" in first
    assert "\x20\x02\x00\x00" in first  # CONNACK, accepted
    second = s_client("-sess_in", str(sess))
    assert "Reused, TLSv1.3" in second and "\x20\x02\x00\x00" in second
    # TLS 1.2 tickets too
    s_client("-tls1_2", "-sess_out", str(sess))
    assert "Reused, TLSv1.2" in s_client("-tls1_2", "-sess_in", str(sess))


def test_mosquitto_clients_over_an_ec_certificate(gw: GatewayProcess, pki: Path) -> None:
    topic = f"tickets/{uuid.uuid4().hex[:6]}"
    tls = ["-h", "localhost", "-p", str(gw.ports[0]), "--cafile", str(pki / "ca.crt")]
    login = ["-u", "dev1", "-P", "pw1"]
    sub = subprocess.Popen(
        ["mosquitto_sub", *tls, *login, "-t", topic, "-C", "1", "-W", "20", "-q", "1", "-i", "ec-sub"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # mosquitto_sub is subscribed once the gateway has relayed its SUBSCRIBE: retry the publish until
        # the subscriber has its message
        for _ in range(40):
            pub = subprocess.run(
                ["mosquitto_pub", *tls, *login, "-t", topic, "-m", "over ecdsa", "-q", "1"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert pub.returncode == 0, pub.stderr
            try:
                out, err = sub.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            raise AssertionError("mosquitto_sub got nothing")
        assert sub.returncode == 0, err
        assert out.strip() == "over ecdsa"
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


WORKERS_CONFIG = """
shutdown_timeout = 3.0
[metrics]
address = "127.0.0.1:{{metrics_port}}"

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{{port0}}"
target = "tcp://127.0.0.1:{broker}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["tickets/#"]
"""


@pytest.mark.parametrize("given", [False, True], ids=["supervisor-made", "operator-given"])
def test_workers_resume_each_others_tickets(
    gateway_factory: Any, broker: Mosquitto, pki: Path, given: bool
) -> None:
    """``--workers 2``: every resumed connection resumes, whichever worker the kernel hands it to
    (connections are held until both workers have some). The supervisor makes the workers' one ticket
    secret, or takes FERRYMAN_TLS_TICKET_SECRET (replicas given the same one share tickets too)."""
    env = {TICKET_SECRET_ENV: os.urandom(32).hex()} if given else {}
    if not given:
        env[TICKET_SECRET_ENV] = ""  # not inherited from the test's own environment either
    gw: GatewayProcess = gateway_factory(
        WORKERS_CONFIG.format(broker=broker.port, pki=pki), env=env, args=("--workers", "2")
    )
    wait_for(lambda: all_running(gw), what="both workers running")
    ctx = client_context(pki)
    _, session = mqtt_connect(gw.port, ctx)
    held: list[RawClient] = []
    try:
        for _ in range(40):
            c = RawClient(gw.port)
            c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost", session=session)
            held.append(c)
            assert c.connect(f"t-{uuid.uuid4().hex[:8]}", "dev1", "pw1").reason_code == 0
            assert c.sock.session_reused  # type: ignore[attr-defined]
            session = c.sock.session  # type: ignore[attr-defined]
            counts = open_per_worker(gw)
            if all(counts.values()) and sum(counts.values()) == len(held):
                break
        else:
            raise AssertionError(f"40 connections did not land on both workers: {open_per_worker(gw)}")
    finally:
        for c in held:
            c.close()
