"""DTLS (``coaps``) with X.509 certificates: ``ferryman run`` with coap listeners that have
``[listener.tls]`` (protocols/coap/dtls_cert.py, OpenSSL through pyOpenSSL), libcoap's
``coap-client-openssl -c cert -j key -R ca`` as the independent DTLS client, mosquitto and
``mosquitto_sub`` on the MQTT side; and the terminator itself, in memory, against a pyOpenSSL client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from ferryman.protocols.coap.dtls_cert import DtlsTerminator, split_records
from ferryman.protocols.coap.listener import CoapListener
from ferryman.wiring import load_settings
from tests.coap_support import free_udp_ports, libcoap_server
from tests.http_support import Subscriber
from tests.integration.test_coap_dtls import _client
from tests.integration.test_coap_mqtt import _notifications
from tests.servers import GatewayProcess, Mosquitto

CONFIG = """
shutdown_timeout = 3.0
[metrics]
address = "127.0.0.1:{{metrics_port}}"

[[listener]]
name = "coaps-mtls"
protocol = "coap"
address = "127.0.0.1:{mtls_port}"
target = "mqtt"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"
verify = ["crl"]
crl_file = "{pki}/crl.pem"

[[listener]]
name = "coaps-proxy"
protocol = "coap"
address = "127.0.0.1:{proxy_port}"
target = "coap://127.0.0.1:{target_port}"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"
client_ca_file = "{pki}/ca.crt"

[[listener]]
name = "coaps-server-only"
protocol = "coap"
address = "127.0.0.1:{tls_port}"
target = "mqtt"
[listener.tls]
cert_file = "{pki}/server.crt"
key_file = "{pki}/server.key"

[auth]
handler = "static"
[[auth.users]]
username = "device"
identity = "client"
publish = ["sensors/%u/#", "example_data"]
subscribe = ["example_data"]
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "coaps-cert-{uid}"
"""


class Gw:
    def __init__(
        self, proc: GatewayProcess, mtls_port: int, tls_port: int, proxy_port: int, pki: Path
    ) -> None:
        self.proc = proc
        self.proxy_port = proxy_port
        self.mtls_port = mtls_port
        self.tls_port = tls_port
        self.pki = pki

    def post(
        self, port: int, path: str, payload: str, cert: str | None = "client", wait: int = 3
    ) -> tuple[str | None, str, str]:
        """POST with ``cert``'s certificate of the dev PKI (None: no client certificate)."""
        return self.request(port, path, "-m", "post", "-e", payload, cert=cert, wait=wait)

    def request(
        self, port: int, path: str, *args: str, cert: str | None = "client", wait: int = 3
    ) -> tuple[str | None, str, str]:
        pki = ["-R", str(self.pki / "ca.crt")]
        if cert is not None:
            pki += ["-c", str(self.pki / f"{cert}.crt"), "-j", str(self.pki / f"{cert}.key")]
        return _client(*pki, *args, f"coaps://127.0.0.1:{port}/{path}", wait=wait)


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("coaps-cert-mosquitto")) as m:
        yield m


@pytest.fixture(scope="module")
def coap_target() -> Iterator[int]:
    """libcoap's example server: the proxy listener's target."""
    with libcoap_server() as port:
        yield port


@pytest.fixture(scope="module")
def gw(
    mqtt_broker: Mosquitto, dev_pki: Path, coap_target: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gw]:
    mtls_port, tls_port, proxy_port = free_udp_ports(3)
    config = CONFIG.format(
        mtls_port=mtls_port,
        tls_port=tls_port,
        proxy_port=proxy_port,
        target_port=coap_target,
        pki=dev_pki,
        broker=mqtt_broker.port,
        uid=uuid.uuid4().hex[:6],
    )
    proc = GatewayProcess(tmp_path_factory.mktemp("coaps-cert-gw"), config)
    proc.ports = [proc.metrics_port]  # UDP cannot be waited for; metrics come up after the listeners
    proc.start()
    yield Gw(proc, mtls_port, tls_port, proxy_port, dev_pki)
    rc, err = proc.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


# -- through the gateway, with libcoap's client ------------------------------------------------------------


def test_client_certificate_publishes_without_a_password(gw: Gw, mqtt_broker: Mosquitto) -> None:
    sub = Subscriber(mqtt_broker.port, "sensors/#").start()
    # The static user with identity = "client" (the certificate's CN) logs in without ?auth.
    code, _, out = gw.post(gw.mtls_port, "sensors/device/temp", "21.5")
    assert code == "2.04", out
    assert sub.messages() == ["1 0 sensors/device/temp 21.5"]
    code, _, out = gw.post(gw.mtls_port, "dev1/x", "1")
    assert code == "4.03", out  # the grant is the certificate's user's


def test_observe_over_dtls_with_a_client_certificate(gw: Gw, mqtt_broker: Mosquitto) -> None:
    """Observe on the mTLS listener, logged in by the certificate alone: the certificate's user may
    subscribe to example_data, MQTT messages come as notifications over the DTLS session, and the MQTT
    subscription goes when the observer leaves. A filter outside that user's grant is 4.03."""
    pki = ["-R", str(gw.pki / "ca.crt"), "-c", str(gw.pki / "client.crt"), "-j", str(gw.pki / "client.key")]
    url = f"coaps://127.0.0.1:{gw.mtls_port}/example_data"
    obs = subprocess.Popen(
        ["coap-client-openssl", "-v", "7", "-s", "6", "-m", "get", *pki, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(obs.stdout or []), daemon=True)
    reader.start()

    def publish_until_notified(payload: str) -> None:
        deadline = time.monotonic() + 10
        while payload not in _notifications("".join(lines)):  # the bridge's SUBACK comes asynchronously
            assert time.monotonic() < deadline, "".join(lines)[-2000:]
            mqtt = ["mosquitto_pub", "-p", str(mqtt_broker.port), "-t", "example_data", "-m", payload]
            subprocess.run(mqtt, check=True, timeout=10)
            time.sleep(0.2)

    try:
        publish_until_notified("m1")
        publish_until_notified("m2")
        obs.wait(timeout=20)
    finally:
        if obs.poll() is None:
            obs.kill()
    reader.join(5)
    notes = _notifications("".join(lines))
    assert notes[0] == "" and notes[-1] == "m2", notes  # the registration's answer first
    deadline = time.monotonic() + 10
    while "unsubscribing example_data: its last CoAP observer left" not in gw.proc.stderr():
        assert time.monotonic() < deadline, gw.proc.stderr()[-2000:]
        time.sleep(0.05)
    code, _, out = gw.request(gw.mtls_port, "sensors/%23", "-m", "get", "-s", "1")
    assert code == "4.03", out


def test_refused_certificates_get_no_session_and_publish_nothing(gw: Gw, mqtt_broker: Mosquitto) -> None:
    sub = Subscriber(mqtt_broker.port, "sensors/#").start()
    # No client certificate, one of an unknown CA, an expired one, a revoked one (verify = ["crl"]).
    for cert in (None, "client-unknown", "client-expired", "client-revoked"):
        code, _, out = gw.post(gw.mtls_port, "sensors/device/temp", f"bad-{cert}", cert=cert, wait=2)
        assert code is None, (cert, out)
    # The first message the subscriber sees is the next good one: nothing came from the refused clients.
    assert gw.post(gw.mtls_port, "sensors/device/ok", "ok")[0] == "2.04"
    assert sub.messages() == ["1 0 sensors/device/ok ok"]
    # Each was refused for its own reason (the gateway's log).
    log = gw.proc.stderr_path.read_text()
    for reason in (
        "refused: peer did not return a certificate",
        "refused: unable to get local issuer certificate",
        "refused: certificate has expired",
        "refused: client certificate revoked (CRL)",
    ):
        assert reason in log, log[-3000:]


def test_server_certificate_only_listener_takes_passwords(gw: Gw, mqtt_broker: Mosquitto) -> None:
    """Without client_ca_file no client certificate is asked for: ?auth decides, as on plain coap."""
    sub = Subscriber(mqtt_broker.port, "dev1/#").start()
    code, _, out = gw.post(gw.tls_port, "dev1/x?auth=dev1:pw1", "2", cert=None)
    assert code == "2.04", out
    assert sub.messages() == ["1 0 dev1/x 2"]
    code, payload, out = gw.post(gw.tls_port, "dev1/x", "3", cert=None)
    assert (code, payload) == ("4.01", "credentials required: ?auth=<username>:<password>"), out


def test_proxy_mode_over_dtls_with_certificates(gw: Gw) -> None:
    """The same proxy site as for plain coap, behind DTLS: the certificate's user and grant apply."""
    code, _, out = gw.request(gw.proxy_port, "example_data", "-m", "put", "-e", "via-dtls-cert")
    assert code in ("2.01", "2.04"), out
    code, payload, out = gw.request(gw.proxy_port, "example_data", "-m", "get")
    assert (code, payload) == ("2.05", "via-dtls-cert"), out
    assert gw.request(gw.proxy_port, "time", "-m", "get")[0] == "4.03"  # not in the grant: never forwarded
    assert gw.request(gw.proxy_port, "example_data", "-m", "get", cert="client-unknown", wait=2)[0] is None


def test_plain_coap_to_the_dtls_port_gets_no_answer(gw: Gw) -> None:
    code, _, out = _client(
        "-m", "post", "-e", "1", f"coap://127.0.0.1:{gw.tls_port}/dev1/x?auth=dev1:pw1",
        program="coap-client-notls", wait=1,
    )  # fmt: skip
    assert code is None, out


# -- the terminator in memory ------------------------------------------------------------------------------


class _Transport(asyncio.DatagramTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        self.sent.append((bytes(data), addr))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _tls(pki: Path, client_ca: bool = True) -> Any:
    from ferryman.config.schema import TlsSettings

    return TlsSettings(
        cert_file=str(pki / "server.crt"),
        key_file=str(pki / "server.key"),
        client_ca_file=str(pki / "ca.crt") if client_ca else "",
    )


def _dtls_client(pki: Path, cert: str = "client") -> SSL.Connection:
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    ctx.use_certificate_chain_file(str(pki / f"{cert}.crt"))
    ctx.use_privatekey_file(str(pki / f"{cert}.key"))
    ctx.load_verify_locations(str(pki / "ca.crt"))
    ctx.set_verify(SSL.VERIFY_PEER)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn


def _pump_client(conn: SSL.Connection) -> bytes:
    with contextlib.suppress(SSL.WantReadError):
        conn.do_handshake()
    out = b""
    while True:
        try:
            chunk = conn.bio_read(65535)
        except SSL.WantReadError:
            break
        out += chunk
    return out


def test_terminator_in_memory_cookie_handshake_state_bounds(dev_pki: Path) -> None:
    async def run() -> None:
        got: list[tuple[bytes, Any]] = []
        term = DtlsTerminator(_tls(dev_pki), lambda data, addr: got.append((data, addr)), max_peers=2)
        transport = _Transport()
        term.connection_made(transport)
        # Garbage and cookie-less ClientHellos from many source ports leave no state; a hello gets a
        # HelloVerifyRequest no larger than itself.
        for port in range(40000, 40020):
            term.datagram_received(b"\x16\xfe\xfd garbage" * 3, ("127.0.0.1", port))
        hello = _pump_client(_dtls_client(dev_pki))
        for port in range(40000, 40020):
            term.datagram_received(hello, ("127.0.0.1", port))
        assert term.peers == {} and term.cookies == 20 and term.dropped == 20
        assert all(len(d) <= len(hello) for d, _ in transport.sent)

        # A full handshake: client <-> terminator, datagram by datagram.
        client, addr = _dtls_client(dev_pki), ("127.0.0.1", 41000)
        to_server = _pump_client(client)
        for _ in range(10):
            transport.sent.clear()
            for datagram in split_records(to_server):
                term.datagram_received(datagram, addr)
            for datagram, _to in transport.sent:
                client.bio_write(datagram)
            to_server = _pump_client(client)
            if term.identity_of(addr) is not None and not to_server:
                break
        assert term.identity_of(addr) == "client" and term.handshakes == 1
        assert client.get_protocol_version_name() == "DTLSv1.2"
        # Garbage (or a spoofed, cookie-less hello) from the peer's address does not end its association.
        term.datagram_received(b"\x17\xfe\xfd\x00\x01" + b"\x00" * 6 + b"\x00\x04junk", addr)
        term.datagram_received(b"not dtls at all", addr)
        term.datagram_received(hello, addr)
        assert term.identity_of(addr) == "client"
        client.send(b"coap request")
        term.datagram_received(_pump_client(client), addr)
        assert got == [(b"coap request", addr)]
        assert term.send_to(b"coap answer", ("::ffff:127.0.0.1", 41000, 0, 0))
        for datagram, _to in transport.sent[-1:]:
            client.bio_write(datagram)
        assert client.recv(100) == b"coap answer"
        # Close_notify drops the peer; nothing is sent to a peer without a session.
        client.shutdown()
        term.datagram_received(_pump_client(client), addr)
        assert term.peers == {} and not term.send_to(b"late", addr)
        term.close()

    asyncio.run(run())


def test_terminator_refuses_a_client_without_certificate(dev_pki: Path) -> None:
    async def run() -> None:
        term = DtlsTerminator(_tls(dev_pki), lambda data, addr: None)
        transport = _Transport()
        term.connection_made(transport)
        ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE)
        client, addr = SSL.Connection(ctx, None), ("127.0.0.1", 41001)
        client.set_connect_state()
        to_server = _pump_client(client)
        for _ in range(10):
            transport.sent.clear()
            for datagram in split_records(to_server):
                term.datagram_received(datagram, addr)
            for datagram, _to in transport.sent:
                client.bio_write(datagram)
            try:
                to_server = _pump_client(client)
            except SSL.Error:
                break  # the server's alert
            if not to_server:
                break
        assert term.refused == 1 and term.peers == {} and term.identity_of(addr) is None
        term.close()

    asyncio.run(run())


# -- settings --------------------------------------------------------------------------------------------


def test_what_the_listener_refuses(tmp_path: Path, dev_pki: Path) -> None:
    tls = f'[listener.tls]\ncert_file = "{dev_pki}/server.crt"\nkey_file = "{dev_pki}/server.key"'
    path = tmp_path / "s.toml"

    def problems(extra: str) -> list[str]:
        path.write_text(
            '[[listener]]\nname = "c"\nprotocol = "coap"\naddress = "127.0.0.1:5684"\ntarget = "mqtt"\n'
            f"{extra}\n[bridge.mqtt]\n"
        )
        return CoapListener.validate_settings(load_settings(path, env={}).listeners[0])

    assert problems(tls) == []
    (both,) = problems(tls + '\n[listener.psk]\nsensor-17 = "0123456789abcdef"')
    assert "[listener.tls] and [listener.psk]" in both


def test_the_any_address_is_dual_stack() -> None:
    from ferryman.protocols.coap.listener import _udp_socket

    sock = _udp_socket("::", 0)
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    finally:
        sock.close()
