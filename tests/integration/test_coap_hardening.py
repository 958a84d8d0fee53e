"""CoAP hardening (issue 11), attacked from outside: raw UDP sockets and ``coap-client-notls`` against a
``ferryman run`` with a CoAP -> MQTT listener (``pub``, through mosquitto) and a proxy-mode listener
(``proxy``, in front of the aiocoap target of ``tests/coap_support.py``).

- observations of peers that vanished are dropped within the liveness check interval (set to 1 s here),
  their MQTT subscription released and the target's observation ended; observations are bounded per peer
  and in total (defect 9);
- answers to unauthenticated peers are never larger than the request; a reserved token length is a message
  format error: RST to a CON, nothing to a NON (defect 10);
- a wrong password and an unknown user get the same answer (defect 11);
- an out-of-order or resized Block1 upload gets 4.08, not 5.00 (defect 12);
- a Block option with the reserved SZX 7 gets 4.00 (RFC 7959 2.2), one over 3 bytes or repeated 4.02
  (RFC 7252 5.4.3, 5.4.5) (defect 13).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest

from ferryman.protocols.coap.codec import (
    ACK,
    BLOCK1,
    BLOCK2,
    CON,
    NON,
    OBSERVE,
    RST,
    URI_PATH,
    URI_QUERY,
    Datagram,
    encode,
    parse,
)
from tests.coap_support import CoapTarget, free_udp_ports
from tests.servers import GatewayProcess, Mosquitto

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "info"
[metrics]
address = "127.0.0.1:{{port}}"

[[listener]]
name = "pub"
protocol = "coap"
address = "127.0.0.1:{pub}"
target = "mqtt"
connect_timeout = 3.0
observe_check_interval = 1.0
max_observations = 8
max_observations_per_peer = 3

[[listener]]
name = "proxy"
protocol = "coap"
address = "127.0.0.1:{proxy}"
target = "coap://127.0.0.1:{target}"
connect_timeout = 3.0
observe_check_interval = 1.0
max_observations = 8
max_observations_per_peer = 3

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#", "obs/#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "{client_id}"
"""

GET, POST, PUT, DELETE = 1, 2, 3, 4
AUTH = b"auth=dev1:pw1"
CHECK_INTERVAL = 1.0


class Gw:
    def __init__(self, proc: GatewayProcess, pub: int, proxy: int, client_id: str) -> None:
        self.proc, self.pub, self.proxy, self.client_id = proc, pub, proxy, client_id

    def metric(self, name: str, listener: str) -> float:
        url = f"http://127.0.0.1:{self.proc.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        m = re.search(rf'^{name}{{listener="{listener}"}} (\S+)$', text, re.M)
        assert m is not None, f"{name} for {listener} missing"
        return float(m.group(1))

    def observations(self, listener: str) -> float:
        return self.metric("ferryman_coap_observations", listener)


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("coap-h-mosquitto"), extra="log_type all\n") as m:
        yield m


@pytest.fixture(scope="module")
def target() -> Iterator[CoapTarget]:
    with CoapTarget() as t:
        yield t


@pytest.fixture(scope="module")
def gw(mqtt_broker: Mosquitto, target: CoapTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    pub, proxy = free_udp_ports(2)
    client_id = f"coap-h-{uuid.uuid4().hex[:6]}"
    config = CONFIG.format(
        pub=pub, proxy=proxy, target=target.port, broker=mqtt_broker.port, client_id=client_id
    )
    proc = GatewayProcess(tmp_path_factory.mktemp("coap-h-gw"), config)
    proc.start()
    gateway = Gw(proc, pub, proxy, client_id)
    for port in (pub, proxy):  # both listeners answer (a POST without credentials: 4.01)
        with Peer(port) as p:
            wait_for(lambda p=p: p.exchange(encode(CON, POST, p.mid(), b"w", [(URI_PATH, b"x")])) is not None)
    yield gateway
    rc, err = proc.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not met within {timeout} s")


class Peer:
    """One UDP socket of a raw CoAP peer."""

    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self._mid = int.from_bytes(os.urandom(2), "big")

    def mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def recv(self, timeout: float = 3.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(65536)[0]
        except (TimeoutError, ConnectionRefusedError):
            return None

    def exchange(self, data: bytes, timeout: float = 3.0) -> Datagram | None:
        """Sends ``data`` and returns the first answer with its token (or its message id: an RST)."""
        self.send(data)
        sent = parse(data)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            raw = self.recv(left)
            if raw is None:
                return None
            got = parse(raw)
            if got is None:
                continue
            if sent is None or got.token == sent.token or (got.mtype == RST and got.mid == sent.mid):
                return got
        return None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    code: int,
    path: str,
    *,
    auth: bytes | None = AUTH,
    mtype: int = CON,
    mid: int = 1,
    token: bytes = b"tk",
    extra: list[tuple[int, bytes]] | None = None,
    payload: bytes = b"",
) -> bytes:
    options = [(URI_PATH, p.encode()) for p in path.split("/") if p]
    if auth is not None:
        options.append((URI_QUERY, auth))
    options += extra or []
    options.sort(key=lambda o: o[0])
    return encode(mtype, code, mid, token, options, payload)


def register(peer: Peer, path: str, token: bytes) -> Datagram | None:
    return peer.exchange(request(GET, path, mid=peer.mid(), token=token, extra=[(OBSERVE, b"")]))


def broker_log(broker: Mosquitto) -> str:
    return broker.log.read_text(errors="replace")


def mosquitto_pub(broker: Mosquitto, topic: str, payload: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-p", str(broker.port), "-t", topic, "-m", payload], check=True, timeout=10
    )


# -- defect 9: observations of vanished peers, bounds ----------------------------------------------------


def test_vanished_observers_are_dropped_and_the_mqtt_subscription_released(
    gw: Gw, mqtt_broker: Mosquitto
) -> None:
    """Six peers observe a quiet topic from six ports, then close their sockets: within the check interval
    (1 s here; plus the ICMP answer to the check notification) the gateway drops the observations, the
    gauge goes back to 0 and the bridge unsubscribes the filter on the broker."""
    topic = f"dev1/vanish/{uuid.uuid4().hex[:8]}"
    peers = [Peer(gw.pub) for _ in range(6)]
    for n, peer in enumerate(peers):
        answer = register(peer, topic, f"o{n}".encode())
        assert answer is not None and answer.code == 0x45 and answer.option(OBSERVE) is not None, answer
    pattern = rf"Received SUBSCRIBE from {gw.client_id}\n.*{re.escape(topic)} \(QoS"
    wait_for(lambda: re.search(pattern, broker_log(mqtt_broker)), what="the bridge subscribed")
    for peer in peers:
        peer.close()
    unsubscribed = rf"Received UNSUBSCRIBE from {gw.client_id}\n.*{re.escape(topic)}"
    wait_for(
        lambda: re.search(unsubscribed, broker_log(mqtt_broker)),
        timeout=CHECK_INTERVAL + 8,
        what="the bridge unsubscribed",
    )
    assert gw.observations("pub") == 0


def test_vanished_observers_in_proxy_mode_end_the_target_s_observation(gw: Gw, target: CoapTarget) -> None:
    path = f"obs/vanish-{uuid.uuid4().hex[:8]}"
    peers = [Peer(gw.proxy) for _ in range(4)]
    for n, peer in enumerate(peers):
        answer = register(peer, path, f"p{n}".encode())
        assert answer is not None and answer.code == 0x45 and answer.option(OBSERVE) is not None, answer
    assert target.observers().get(path) == 4
    for peer in peers:
        peer.close()
    wait_for(
        lambda: not target.observers().get(path),
        timeout=CHECK_INTERVAL + 8,
        what="the target's observations ended",
    )
    wait_for(lambda: gw.observations("proxy") == 0, what="observations dropped")


def test_a_live_observer_survives_the_checks_and_keeps_its_notifications(
    gw: Gw, mqtt_broker: Mosquitto
) -> None:
    """coap-client acknowledges the CON check notifications: its observation outlives several intervals
    and still gets the next MQTT message."""
    topic = f"dev1/alive/{uuid.uuid4().hex[:8]}"
    uri = f"coap://127.0.0.1:{gw.pub}/{topic}?auth=dev1:pw1"
    obs = subprocess.Popen(
        ["coap-client-notls", "-s", "6", "-m", "get", uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: gw.observations("pub") >= 1, what="registered")
        time.sleep(4 * CHECK_INTERVAL)
        assert gw.observations("pub") == 1
        mosquitto_pub(mqtt_broker, topic, "still-here")
        out, _ = obs.communicate(timeout=20)
    finally:
        if obs.poll() is None:
            obs.kill()
            obs.wait()
    assert b"still-here" in out, out


def test_observations_are_bounded_per_peer_and_in_total(gw: Gw) -> None:
    for listener, port, path in (("pub", gw.pub, "dev1/bound"), ("proxy", gw.proxy, "obs/bound")):
        wait_for(lambda listener=listener: gw.observations(listener) == 0, what="no observation left")
        peers = [Peer(port) for _ in range(4)]
        try:
            for n in range(3):  # max_observations_per_peer = 3
                ok = register(peers[0], f"{path}/{n}", f"a{n}".encode())
                assert ok is not None and ok.code == 0x45, ok
            over = register(peers[0], f"{path}/3", b"a3")
            assert over is not None and over.code == 0x9D and over.option(OBSERVE) is None, over  # 4.29
            for n in range(3):
                assert (ok := register(peers[1], f"{path}/{n}", f"b{n}".encode())) and ok.code == 0x45
            for n in range(2):  # 8 in all: max_observations
                assert (ok := register(peers[2], f"{path}/{n}", f"c{n}".encode())) and ok.code == 0x45
            full = register(peers[3], f"{path}/x", b"d0")
            assert full is not None and full.code == 0xA3 and full.option(OBSERVE) is None, full  # 5.03
            assert gw.observations(listener) == 8
        finally:
            for peer in peers:
                peer.close()
        wait_for(lambda listener=listener: gw.observations(listener) == 0, what=f"{listener}: all dropped")


# -- defect 10: reflection -------------------------------------------------------------------------------


def _unauthenticated_corpus(mid: Callable[[], int]) -> list[bytes]:
    corpus = []
    for mtype in (CON, NON):
        for code in (GET, POST, PUT, DELETE, 5, 7):
            corpus.append(encode(mtype, code, mid()))  # the 4-byte header alone
            corpus.append(encode(mtype, code, mid(), b"\x01"))
            corpus.append(request(code, "a", auth=None, mtype=mtype, mid=mid(), token=b""))
            corpus.append(
                request(code, "dev1/x", auth=b"auth=dev1:wrong", mtype=mtype, mid=mid(), token=b"t")
            )
            corpus.append(request(code, "dev1/x", auth=b"auth=", mtype=mtype, mid=mid()))
            corpus.append(request(code, "dev1/x", auth=b"auth=token", mtype=mtype, mid=mid()))
        corpus.append(request(GET, "o", auth=None, mtype=mtype, mid=mid(), extra=[(OBSERVE, b"")]))
        corpus.append(request(POST, "", auth=None, mtype=mtype, mid=mid(), extra=[(9, b"x")]))  # critical
        corpus.append(request(POST, "a", auth=None, mtype=mtype, mid=mid(), extra=[(BLOCK1, b"\x0e")]))
        corpus.append(request(GET, "a", auth=None, mtype=mtype, mid=mid(), extra=[(BLOCK2, b"\x12")]))
        corpus.append(request(GET, "a", auth=None, mtype=mtype, mid=mid(), extra=[(35, b"coap://x/")]))
    return corpus


@pytest.mark.parametrize("listener", ["pub", "proxy"])
def test_answers_to_unauthenticated_peers_are_never_larger_than_the_request(gw: Gw, listener: str) -> None:
    port = gw.pub if listener == "pub" else gw.proxy
    with Peer(port) as peer:
        corpus = _unauthenticated_corpus(peer.mid)
        larger = []
        answered = 0
        for data in corpus:
            peer.send(data)
            deadline = time.monotonic() + 0.4
            while (left := deadline - time.monotonic()) > 0:
                raw = peer.recv(left)
                if raw is None:
                    break
                answered += 1
                if len(raw) > len(data):
                    larger.append((data.hex(), len(data), len(raw), raw[:60]))
    assert answered >= len(corpus) // 2  # most are answered (4.01, 4.05, 4.02 ...): the test sees them
    assert not larger, larger


@pytest.mark.parametrize("listener", ["pub", "proxy"])
def test_a_reserved_token_length_is_a_format_error(gw: Gw, listener: str) -> None:
    """RFC 7252 3: token lengths 9-15 are a message format error: a CON is rejected with an RST (4 bytes,
    its message id), a NON is ignored (4.2, 4.3)."""
    port = gw.pub if listener == "pub" else gw.proxy
    with Peer(port) as peer:
        for tkl in (9, 12, 15):
            mid = peer.mid()
            con = bytes((0x40 | tkl, POST, mid >> 8, mid & 0xFF)) + b"T" * tkl + b"\xb1a"
            answer = peer.exchange(con, timeout=2)
            assert answer is not None and (answer.mtype, answer.code, answer.mid) == (RST, 0, mid), answer
            assert answer.token == b"" and not answer.options and not answer.payload
            non = bytes((0x50 | tkl, POST, 0, 1)) + b"T" * tkl + b"\xb1a"
            peer.send(non)
            assert peer.recv(0.5) is None
        mid = peer.mid()
        short = bytes((0x4F, GET, mid >> 8, mid & 0xFF))  # a token length of 15, and no token at all
        answer = peer.exchange(short, timeout=2)
        assert answer is not None and (answer.mtype, answer.mid) == (RST, mid), answer


# -- defect 11: user enumeration -------------------------------------------------------------------------


def _client(*args: str) -> str:
    proc = subprocess.run(["coap-client-notls", "-B", "3", *args], capture_output=True, timeout=20)
    return (proc.stdout + proc.stderr).decode(errors="replace").strip()


@pytest.mark.parametrize("listener", ["pub", "proxy"])
def test_wrong_password_and_unknown_user_get_the_same_answer(gw: Gw, listener: str) -> None:
    port = gw.pub if listener == "pub" else gw.proxy
    answers = {}
    for method, path, extra in (("post", "dev1/t", ["-e", "x"]), ("get", "dev1/t", ["-s", "1"])):
        for who in ("dev1:wrong", "nosuchuser:wrong", "nosuchuser:pw1"):
            uri = f"coap://127.0.0.1:{port}/{path}?auth={who}"
            answers[(method, who)] = _client("-m", method, *extra, uri)
        texts = {answers[(method, who)] for who in ("dev1:wrong", "nosuchuser:wrong", "nosuchuser:pw1")}
        assert len(texts) == 1, answers
        assert "4.01" in texts.pop()


# -- defect 3, CoAP part: a topic the broker would refuse never reaches the bridge's session --------------


def test_control_characters_in_a_coap_topic_get_4_00_and_the_bridge_keeps_working(
    gw: Gw, mqtt_broker: Mosquitto
) -> None:
    """A path segment holding U+0001 or U+0085 (C1) is refused with 4.00 at the listener; mosquitto would
    have closed the bridge's one session over it. A good publish afterwards arrives, once."""
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(mqtt_broker.port), "-t", "dev1/ok", "-C", "1", "-W", "20"],
        stdout=subprocess.PIPE,
    )
    try:
        time.sleep(0.5)  # the subscription is in place
        with Peer(gw.pub) as peer:
            for bad in ("dev1/a\x01b", "dev1/caf\u0085", "dev1/x\x7f"):
                got = peer.exchange(request(POST, bad, mid=peer.mid(), token=b"bad", payload=b"p"))
                assert got is not None and got.code == 0x80, (bad, got)  # 4.00
                assert b"U+00" in got.payload, got.payload
            ok = peer.exchange(request(POST, "dev1/ok", mid=peer.mid(), token=b"ok", payload=b"fine"))
            assert ok is not None and ok.code == 0x44, ok  # 2.04
        out, _ = sub.communicate(timeout=25)
        assert out == b"fine\n"
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


# -- defect 12: Block1 out of order or resized -----------------------------------------------------------


def _block(num: int, more: bool, szx: int) -> bytes:
    value = num << 4 | (8 if more else 0) | szx
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


@pytest.mark.parametrize("listener", ["pub", "proxy"])
def test_out_of_order_and_resized_block1_uploads_get_4_08(gw: Gw, listener: str) -> None:
    port, path = (gw.pub, "dev1/blocks") if listener == "pub" else (gw.proxy, "dev1/blocks")
    cases = {
        # block 0 of 64 bytes, then block 2: block 1 is missing
        "gap": [(0, True, 2, 64), (2, False, 2, 10)],
        # block 0 of 64 bytes, then "block 1" of 32-byte blocks (offset 32): the sizes do not add up
        "resized": [(0, True, 2, 64), (1, False, 1, 10)],
        # block 0 of 64 bytes, then block 0 again ... then block 3
        "skip-ahead": [(0, True, 2, 64), (1, True, 2, 64), (3, False, 2, 5)],
    }
    for name, blocks in cases.items():
        with Peer(port) as peer:
            answers = []
            for num, more, szx, size in blocks:
                data = request(
                    POST,
                    f"{path}/{name}",
                    mid=peer.mid(),
                    token=f"{name[:4]}{num}".encode(),
                    extra=[(BLOCK1, _block(num, more, szx))],
                    payload=b"b" * size,
                )
                answer = peer.exchange(data)
                assert answer is not None, (name, num)
                answers.append(answer.code)
            assert answers[-1] == 0x88, (name, [f"{c >> 5}.{c & 31:02d}" for c in answers])  # 4.08
            assert all(c == 0x5F for c in answers[:-1]), (name, answers)  # 2.31 Continue before


# -- defect 13: Block options with SZX 7, over 3 bytes, repeated; unknown critical options ----------------


@pytest.mark.parametrize("listener", ["pub", "proxy"])
@pytest.mark.parametrize("mtype", [CON, NON], ids=["con", "non"])
def test_bad_block_options_get_4_00_or_4_02(gw: Gw, listener: str, mtype: int) -> None:
    port = gw.pub if listener == "pub" else gw.proxy
    cases = [
        ("block1-szx7", POST, [(BLOCK1, b"\x0f")], 0x80),  # SZX 7, more: RFC 7959 2.2 says 4.00
        ("block1-szx7-last", POST, [(BLOCK1, b"\x07")], 0x80),
        ("block2-szx7", GET, [(BLOCK2, b"\x17")], 0x80),
        ("block1-4-bytes", POST, [(BLOCK1, b"\x00\x00\x00\x0a")], 0x82),  # 0-3 bytes only: 4.02
        ("block2-4-bytes", GET, [(BLOCK2, b"\x00\x00\x00\x02")], 0x82),
        ("block1-twice", POST, [(BLOCK1, b"\x0a"), (BLOCK1, b"\x1a")], 0x82),  # not repeatable
        ("unknown-critical", POST, [(9, b"x")], 0x82),
        ("uri-port-3-bytes", POST, [(7, b"\x00\x16\x33")], 0x82),
    ]
    with Peer(port) as peer:
        for name, code, extra, expected in cases:
            path = "obs/x" if code == GET else "dev1/x"
            data = request(
                code, path, mtype=mtype, mid=peer.mid(), token=name[:8].encode(), extra=extra, payload=b"p"
            )
            answer = peer.exchange(data, timeout=2 if mtype == CON else 0.7)
            if mtype == NON and expected == 0x82:
                # RFC 7252 5.4.1: a NON with an unrecognized critical option is rejected: ignored.
                assert answer is None or answer.code == 0x82, (name, answer)
                continue
            assert answer is not None, name
            assert answer.code == expected, (
                name,
                f"{answer.code >> 5}.{answer.code & 31:02d}",
                answer.payload,
            )
            assert answer.mtype == (ACK if mtype == CON else NON), name


def test_the_gateway_logged_no_traceback(gw: Gw) -> None:
    assert "Traceback" not in gw.proc.stderr(), gw.proc.stderr()[-3000:]
