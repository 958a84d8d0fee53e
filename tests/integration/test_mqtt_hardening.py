"""Issue 11, the MQTT proxy from outside: element-heavy packets (caps, refused in protocol terms, others
unaffected), packet identifier 0, session takeover codes, client ids bound to their identity, fd
exhaustion of the accept loop, a CONNECT trickled byte by byte.

Every attack is made with raw sockets (``tests/rawclient.py`` or bare bytes) against a real gateway
process in front of a real mosquitto."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Publish,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
)
from ferryman.protocols.mqtt.properties import write_string, write_varint
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto, free_port, uid, wait_port

USER_PROPERTY = 0x26
SESSION_EXPIRY = 0x11
BRIDGE_ID = "hardening-bridge"

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{metrics_port}"

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{broker_port}"
connect_timeout = 1.5
max_packet_size = 2097152

[auth]
handler = "static"
{binding}

[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]

[[auth.users]]
username = "dev2"
password = "pw2"
publish = ["dev2/#"]
subscribe = ["dev2/#"]

[[auth.users]]
username = "admin"
password = "admin-pw"
publish = ["#"]
subscribe = ["#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker_port}"
client_id = "{bridge_id}"
"""


def start_gateway(workdir: Path, broker: Mosquitto, binding: str = "") -> GatewayProcess:
    fills = {"broker_port": broker.port, "binding": binding, "bridge_id": BRIDGE_ID}
    gw = GatewayProcess(workdir, CONFIG, fills=fills)
    gw.start()
    return gw


def stop_cleanly(gw: GatewayProcess) -> None:
    rc, err = gw.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


@pytest.fixture(scope="module")
def gw(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = start_gateway(tmp_path_factory.mktemp("hardening"), broker)
    yield gateway
    stop_cleanly(gateway)


# ------------------------------------------------------------------------------------------- packets
def packet(first: int, body: bytes) -> bytes:
    out = bytearray((first,))
    write_varint(out, len(body))
    return bytes(out + body)


def user_properties(n: int) -> bytes:
    """A property block of ``n`` empty user properties (5 bytes each), its length first."""
    block = bytes((USER_PROPERTY, 0, 0, 0, 0)) * n
    out = bytearray()
    write_varint(out, len(block))
    return bytes(out) + block


def heavy_connect(n: int, client_id: str, username: str = "dev1", password: str = "pw1") -> bytes:
    """An MQTT 5 CONNECT with ``n`` empty user properties (1 MiB at n = 209,000)."""
    body = bytearray(b"\x00\x04MQTT\x05\xc2\x00\x3c")  # user name + password + clean start, keepalive 60
    body += user_properties(n)
    write_string(body, client_id)
    write_string(body, username)
    write_string(body, password)
    return packet(0x10, bytes(body))


def heavy_publish(n: int, topic: str) -> bytes:
    body = bytearray()
    write_string(body, topic)
    body += user_properties(n)
    return packet(0x30, bytes(body) + b"x")


def heavy_subscribe(n: int, version: int, topic_filter: str = "dev1/a") -> bytes:
    body = bytearray(b"\x00\x01")
    if version == 5:
        body.append(0)
    one = bytearray()
    write_string(one, topic_filter)
    one.append(0)
    return packet(0x82, bytes(body) + bytes(one) * n)


def heavy_unsubscribe(n: int, version: int) -> bytes:
    body = bytearray(b"\x00\x01")
    if version == 5:
        body.append(0)
    one = bytearray()
    write_string(one, "dev1/a")
    return packet(0xA2, bytes(body) + bytes(one) * n)


def connected(port: int, version: int, client_id: str = "", user: str = "dev1", pw: str = "pw1") -> RawClient:
    c = RawClient(port, version)
    assert c.connect(client_id or f"c-{uid()}", user, pw).reason_code == 0
    return c


def disconnect_codes(c: RawClient) -> list[int]:
    return [p.reason_code for p in c.inbox if isinstance(p, Disconnect)]


# ------------------------------------------------------------------------------- 1. element caps
def test_v5_connect_with_210000_user_properties_gets_connack_0x95(gw: GatewayProcess) -> None:
    c = RawClient(gw.port, 5, timeout=10)
    c.send_raw(heavy_connect(209_000, f"heavy-{uid()}"))
    ack = c.expect(Connack, timeout=10)
    assert ack.reason_code == 0x95
    assert c.closed_within(5)


def test_v5_connect_at_the_cap_is_accepted(gw: GatewayProcess) -> None:
    c = RawClient(gw.port, 5)
    c.send_raw(heavy_connect(64, f"cap-{uid()}"))
    assert c.expect(Connack).reason_code == 0
    c.disconnect()


def test_v5_publish_with_210000_user_properties_gets_disconnect_0x95(gw: GatewayProcess) -> None:
    c = connected(gw.port, 5)
    c.send_raw(heavy_publish(209_000, "dev1/heavy"))
    assert c.closed_within(10)
    assert disconnect_codes(c) == [0x95]


@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_with_210000_filters_is_refused(gw: GatewayProcess, version: int) -> None:
    c = connected(gw.port, version)
    c.send_raw(heavy_subscribe(210_000, version))
    assert c.closed_within(10)
    assert disconnect_codes(c) == ([0x95] if version == 5 else [])
    assert not any(isinstance(p, (Publish, Suback)) for p in c.inbox)


@pytest.mark.parametrize("version", [4, 5])
def test_unsubscribe_with_210000_filters_is_refused(gw: GatewayProcess, version: int) -> None:
    c = connected(gw.port, version)
    c.send_raw(heavy_unsubscribe(210_000, version))
    assert c.closed_within(10)
    assert disconnect_codes(c) == ([0x95] if version == 5 else [])


@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_at_the_cap_is_answered(gw: GatewayProcess, version: int) -> None:
    c = connected(gw.port, version)
    c.send(Subscribe(7, [Subscription(f"dev1/s/{i}", 0) for i in range(128)]))
    ack = c.expect(Suback)
    assert ack.packet_id == 7 and ack.reason_codes == [0] * 128
    c.send(Unsubscribe(8, [f"dev1/s/{i}" for i in range(128)]))
    assert c.expect(Unsuback).packet_id == 8
    c.disconnect()


def round_trips(c: RawClient, seconds: float) -> list[float]:
    """PINGREQ -> PINGRESP through the gateway and the broker, again and again, for ``seconds``."""
    times = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        t0 = time.monotonic()
        c.send(Pingreq())
        assert isinstance(c.recv(timeout=30), Pingresp)
        times.append(time.monotonic() - t0)
        gevent.sleep(0.02)
    return times


def attacker(port: int, kind: str, stop: list[bool], sent: list[int]) -> None:
    """Sends one kind of element-heavy 1 MiB packet again and again, each on a new connection."""
    data = {
        "connect": heavy_connect(209_000, f"a-{uid()}"),
        "subscribe": heavy_subscribe(210_000, 4),
    }[kind]
    login = codec.encode(Connect(client_id="", protocol_level=4, username="dev1", password=b"pw1"), 4)
    while not stop[0]:
        s = socket.socket()
        try:
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            s.sendall(data if kind == "connect" else login + data)
            sent[0] += 1
            s.settimeout(2)  # refused and closed now; before the fix it was taken (after its CPU)
            while s.recv(65536):
                pass
        except OSError:
            gevent.sleep(0.01)
        finally:
            s.close()


def test_good_client_keeps_its_round_trips_while_two_attackers_send_heavy_packets(
    gw: GatewayProcess,
) -> None:
    """Two senders of element-heavy packets (a 1 MiB CONNECT with 209,000 user properties, a SUBSCRIBE
    with 210,000 filters) pushed a good client's round trips to 8-17 s; now each heavy packet costs about
    as much as its first 64 elements, and the good client's round trips stay short."""
    good = connected(gw.port, 4)
    baseline = round_trips(good, 0.5)
    stop = [False]
    sent = [0]
    workers = [gevent.spawn(attacker, gw.port, kind, stop, sent) for kind in ("connect", "subscribe")]
    try:
        gevent.sleep(0.5)
        during = round_trips(good, 4.0)
    finally:
        stop[0] = True
        gevent.joinall(workers, timeout=15)
    print(f"attack: {sent[0]} packets, round trips max {max(during):.3f}s, baseline {max(baseline):.3f}s")
    assert sent[0] >= 4, "the attackers did not get their packets through"
    assert max(during) < 1.0, (
        f"round trips under attack: max {max(during):.2f}s (baseline {max(baseline):.3f}s)"
    )
    good.disconnect()


# --------------------------------------------------------------------------- 2. packet id 0, takeover
ACKS_WITH_ID_0 = {
    "puback": b"\x40\x02\x00\x00",
    "pubrec": b"\x50\x02\x00\x00",
    "pubrel": b"\x62\x02\x00\x00",
    "pubcomp": b"\x70\x02\x00\x00",
    "puback-with-code": b"\x40\x03\x00\x00\x10",
    "subscribe": b"\x82\x09\x00\x00\x00\x00\x04dev1\x00",
    "unsubscribe": b"\xa2\x08\x00\x00\x00\x00\x04dev1",
    "publish-qos1": b"\x32\x0a\x00\x04dev1\x00\x00\x00hi",
    "publish-qos2": b"\x34\x0a\x00\x04dev1\x00\x00\x00hi",
}


@pytest.mark.parametrize("name", sorted(ACKS_WITH_ID_0))
def test_v5_packet_identifier_0_gets_disconnect_0x82(
    gw: GatewayProcess, broker: Mosquitto, name: str
) -> None:
    c = connected(gw.port, 5)
    c.send_raw(ACKS_WITH_ID_0[name])
    assert c.closed_within(5)
    assert disconnect_codes(c) == [0x82], name  # the client's protocol error, not 0x89 "server busy"


@pytest.mark.parametrize("name", sorted(ACKS_WITH_ID_0))
def test_v311_packet_identifier_0_closes(gw: GatewayProcess, name: str) -> None:
    data = ACKS_WITH_ID_0[name]
    if name in ("subscribe", "unsubscribe", "publish-qos1", "publish-qos2"):
        data = data[:4] + data[5:]  # no property length in 3.1.1
        data = bytes((data[0], data[1] - 1)) + data[2:]
    elif name == "puback-with-code":
        return  # not a 3.1.1 packet at all
    c = connected(gw.port, 4)
    c.send_raw(data)
    assert c.closed_within(5)
    assert c.inbox == []


@pytest.mark.parametrize("version", [4, 5])
def test_session_takeover_tells_the_old_v5_client_0x8e(gw: GatewayProcess, version: int) -> None:
    """The same identity connects again with the same client id: the broker drops the old connection.
    An MQTT 5 client is told 0x8E session taken over (it was 0x89 server busy, an invitation to retry
    that makes two clients fight over the id); the new connection is unaffected, at either level."""
    cid = f"take-{uid()}"
    old = connected(gw.port, 5, cid)
    new = connected(gw.port, version, cid)
    assert old.closed_within(5)
    assert disconnect_codes(old) == [0x8E]
    new.send(Pingreq())
    assert isinstance(new.recv(), Pingresp)
    new.disconnect()


# --------------------------------------------------------------------------- 3. client id binding
def queue_for(broker: Mosquitto, topic: str, n: int) -> None:
    pub = RawClient(broker.port, 5)
    assert pub.connect(f"pub-{uid()}").reason_code == 0
    for i in range(n):
        pub.publish(topic, f"m{i}".encode(), qos=1)
    pub.disconnect()


@pytest.mark.parametrize(("version", "refused"), [(4, 2), (5, 0x85)])
def test_another_identity_cannot_take_a_persistent_client_id(
    gw: GatewayProcess, broker: Mosquitto, version: int, refused: int
) -> None:
    """dev1 has a persistent session with QoS 1 messages queued; dev2 (valid password) tries dev1's client
    id: refused (it used to kick dev1 and receive, acknowledge and lose dev1's messages). dev1 comes back
    and gets every queued message."""
    cid = f"dev1-persistent-{uid()}"
    topic = f"dev1/q/{uid()}"
    props = [(SESSION_EXPIRY, 600)] if version == 5 else None
    dev1 = RawClient(gw.port, version)
    assert dev1.connect(cid, "dev1", "pw1", clean=False, properties=props).reason_code == 0
    assert dev1.subscribe(topic, qos=1).reason_codes == [1]
    dev1.disconnect()
    broker.wait_dropped(cid)
    queue_for(broker, topic, 3)

    thief = RawClient(gw.port, version)
    ack = thief.connect(cid, "dev2", "pw2", clean=False, properties=props)
    assert ack.reason_code == refused
    assert thief.closed_within(5)
    assert not any(isinstance(p, Publish) for p in thief.inbox)

    # Also while dev1 is online: it is not kicked.
    dev1 = RawClient(gw.port, version)
    ack = dev1.connect(cid, "dev1", "pw1", clean=False, properties=props)
    assert ack.reason_code == 0 and ack.session_present
    got = []
    while len(got) < 3:
        p = dev1.expect(Publish)
        got.append(p.payload)
        dev1.send(codec.decode(0x40, p.packet_id.to_bytes(2, "big"), version))
    assert got == [b"m0", b"m1", b"m2"]
    thief = RawClient(gw.port, version)
    assert thief.connect(cid, "dev2", "pw2").reason_code == refused
    dev1.send(Pingreq())
    assert isinstance(dev1.recv(), Pingresp)
    dev1.disconnect()


@pytest.mark.parametrize(("version", "refused"), [(4, 2), (5, 0x85)])
def test_the_bridge_client_id_is_reserved(gw: GatewayProcess, version: int, refused: int) -> None:
    c = RawClient(gw.port, version)
    assert c.connect(BRIDGE_ID, "admin", "admin-pw").reason_code == refused
    assert c.closed_within(5)


def test_the_same_identity_may_reconnect_with_its_client_id(gw: GatewayProcess) -> None:
    cid = f"again-{uid()}"
    for version in (4, 5, 4):
        c = connected(gw.port, version, cid)
        c.disconnect()


def test_client_id_binding_none_lets_any_identity_take_an_id(broker: Mosquitto, tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path / "gw", broker, 'client_id_binding = "none"')
    try:
        cid = f"shared-{uid()}"
        first = connected(gateway.port, 5, cid, "dev1", "pw1")
        second = connected(gateway.port, 5, cid, "dev2", "pw2")
        assert first.closed_within(5)
        assert disconnect_codes(first) == [0x8E]
        second.disconnect()
        c = RawClient(gateway.port, 5)
        assert c.connect(BRIDGE_ID, "admin", "admin-pw").reason_code == 0x85  # reserved all the same
    finally:
        stop_cleanly(gateway)


# ------------------------------------------------------------------------ 4. deadlines and fds
def test_connect_trickled_byte_by_byte_is_closed_at_connect_timeout(gw: GatewayProcess) -> None:
    """Slowloris on the MQTT listener: a CONNECT sent a byte every 0.2 s never completes within the
    1.5 s connect_timeout; the gateway closes the socket (the timeout covers the whole CONNECT, not
    each read)."""
    data = codec.encode(
        Connect(client_id=f"slow-{uid()}", protocol_level=4, username="dev1", password=b"pw1"), 4
    )
    s = socket.create_connection(("127.0.0.1", gw.port))
    t0 = time.monotonic()
    closed = False
    try:
        for byte in data[:-1]:
            s.sendall(bytes((byte,)))
            time.sleep(0.2)
    except OSError:
        closed = True
    s.settimeout(5)
    try:
        closed = closed or s.recv(10) == b""
    except OSError:
        closed = True
    s.close()
    assert closed
    assert time.monotonic() - t0 < 1.5 + 5


FD_CONFIG = """
[log]
level = "info"
[metrics]
address = ""
[[listener]]
name = "fd"
protocol = "{protocol}"
address = "127.0.0.1:{port}"
target = "{target}"
path_prefix = "{path}"
connect_timeout = 30.0
header_timeout = 30.0
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
"""


@pytest.mark.parametrize("protocol", ["mqtt", "mqtt-ws", "http"])
def test_accept_loop_survives_fd_exhaustion(broker: Mosquitto, tmp_path: Path, protocol: str) -> None:
    """With RLIMIT_NOFILE reached, accept() fails with EMFILE: the listener logs it once, backs off and
    accepts again when descriptors are free (no traceback per attempt, no dead listener)."""
    from tests.wsclient import WsClient

    port = free_port()
    conf = tmp_path / "ferryman.toml"
    path = "/mqtt" if protocol == "mqtt-ws" else ""
    # http: a reverse proxy to the broker's port is enough (nothing is forwarded: the head never comes)
    target = f"http://127.0.0.1:{broker.port}" if protocol == "http" else f"tcp://127.0.0.1:{broker.port}"
    conf.write_text(FD_CONFIG.format(protocol=protocol, port=port, target=target, path=path))
    stderr_path = tmp_path / "stderr"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    proc = subprocess.Popen(
        [sys.executable, "-m", "ferryman", "run", "--config", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=stderr_path.open("wb"),
        preexec_fn=low_limit,
        cwd=tmp_path,
    )
    held: list[socket.socket] = []
    try:
        wait_port(port, timeout=20, proc=proc)
        # Silent connections: each one the gateway accepts holds a descriptor until connect_timeout (30 s).
        for _ in range(150):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        deadline = time.monotonic() + 20
        while "cannot accept connections" not in stderr_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the fd limit was never reached"
            time.sleep(0.1)
        time.sleep(2.0)  # the accept loop meets EMFILE again and again meanwhile
        for s in held:
            s.close()
        held.clear()
        time.sleep(0.5)
        if protocol == "mqtt":
            again = RawClient(port, 4, timeout=10)
            assert again.connect(f"fd-after-{uid()}", username="dev1", password="pw1").reason_code == 0
            again.disconnect()
        elif protocol == "http":
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 401"), "the listener answers again"
        else:
            ws = WsClient(port)
            try:
                assert ws.mqtt_connect(f"fd-after-{uid()}", 4).reason_code == 0
            finally:
                ws.close()
        assert proc.poll() is None
    finally:
        for s in held:
            s.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = stderr_path.read_text(errors="replace")
    assert "Traceback" not in err, err[-3000:]
    assert err.count("too many open files") + err.count("Too many open files") >= 1, err[-3000:]
    assert err.count("cannot accept connections") <= 2, err[-3000:]  # once an episode, not per attempt
    assert "accepting again" in err, err[-3000:]
