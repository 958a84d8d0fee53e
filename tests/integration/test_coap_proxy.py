"""CoAP proxy mode (``target = "coap://..."``) from outside: ``ferryman run`` with coap listeners in front of
the aiocoap target of ``tests/coap_support.py`` (its own process), ``coap-client-notls`` (libcoap) as the
independent client, and a raw UDP client for what libcoap does not show (message types, ids, tokens).

The long observation (over 30 s without a notification) runs in the background from the start of the
module and is checked by the last test, so the file takes about 40 s in all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import gevent
import pytest

from ferryman import Gateway, Grant, HandlerActor, Refusal, Session
from ferryman.wiring import HANDLERS, LISTENERS, load_settings
from tests.coap_support import (
    ACK,
    CON,
    NON,
    CoapTarget,
    Code,
    RawCoap,
    coap_client,
    free_udp_port,
    free_udp_ports,
    pattern,
)
from tests.servers import GatewayProcess

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "info"
[metrics]
address = "127.0.0.1:{{port0}}"

[[listener]]
name = "coap"
protocol = "coap"
address = "127.0.0.1:{coap}"
target = "coap://127.0.0.1:{target}"
connect_timeout = 2.0

[[listener]]
name = "dead"
protocol = "coap"
address = "127.0.0.1:{dead_listener}"
target = "coap://127.0.0.1:{dead}"
connect_timeout = 1.0

[[listener]]
name = "silent"
protocol = "coap"
address = "127.0.0.1:{silent_listener}"
target = "coap://127.0.0.1:{silent}"
connect_timeout = 1.0

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#", "obs/#", "big/#"]
"""

AUTH = "auth=dev1:pw1"
LONG_SILENCE = 33.0  # seconds without a notification in the long observation (mGate drops at 30)


class Gw:
    """The gateway process and the addresses of its listeners."""

    def __init__(self, proc: GatewayProcess, coap: int, dead: int, silent: int) -> None:
        self.proc = proc
        self.coap, self.dead, self.silent = coap, dead, silent

    def url(self, path: str, port: int | None = None) -> str:
        return f"coap://127.0.0.1:{port or self.coap}/{path}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proc.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def state(self, kind: str) -> float:
        m = re.search(rf'ferryman_coap_proxy_state{{kind="{kind}",listener="coap"}} (\S+)', self.metrics())
        assert m is not None, "the proxy's state gauge is missing"
        return float(m.group(1))

    def rss_kib(self) -> int:
        assert self.proc.proc is not None
        status = Path(f"/proc/{self.proc.proc.pid}/status").read_text()
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert m is not None
        return int(m.group(1))


@pytest.fixture(scope="module")
def target() -> Iterator[CoapTarget]:
    with CoapTarget() as t:
        yield t


@pytest.fixture(scope="module")
def silent() -> Iterator[socket.socket]:
    """A UDP socket that reads nothing and answers nothing."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


@pytest.fixture(scope="module")
def gw(target: CoapTarget, silent: socket.socket, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    coap, dead_listener, silent_listener, dead = free_udp_ports(4)
    config = CONFIG.format(
        coap=coap,
        target=target.port,
        dead_listener=dead_listener,
        dead=dead,
        silent_listener=silent_listener,
        silent=silent.getsockname()[1],
    )
    # The one TCP port GatewayProcess waits for is the metrics server's; the coap listeners are UDP.
    proc = GatewayProcess(tmp_path_factory.mktemp("coap-gw"), config, ports=1)
    proc.start()
    gateway = Gw(proc, coap, dead_listener, silent_listener)
    _wait_answering(coap)
    yield gateway
    rc, err = proc.stop()
    assert rc == 0 and not _unexpected_tracebacks(err), f"gateway exited {rc}:\n{err[-3000:]}"


def _unexpected_tracebacks(err: str) -> list[str]:
    """Tracebacks in the gateway's stderr, but aiocoap's own on a datagram with invalid UTF-8 in a string
    option (its udp6 transport lets the UnicodeDecodeError of ``Message.decode`` escape to the loop's
    exception handler: the datagram is dropped and the listener keeps serving, which the garbage test
    checks; the log line belongs to the listener's logging set-up)."""
    blocks = err.split("Traceback (most recent call last):")[1:]
    return [
        b for b in blocks if not ("aiocoap/message.py" in b and "UnicodeDecodeError" in b.split("\n\n")[0])
    ]


def _wait_answering(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with RawCoap(port) as c:
        while time.monotonic() < deadline:
            try:
                c.request(Code.GET, "ping", timeout=0.5)
                return
            except (TimeoutError, OSError):
                continue
    raise TimeoutError(f"the coap listener on {port} does not answer")


@pytest.fixture(scope="module")
def long_observation(gw: Gw, target: CoapTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """libcoap observes ``obs/long`` for LONG_SILENCE + 6 s; the target notifies at 2 s and after
    LONG_SILENCE more seconds of silence. Started by the first test, checked by the last."""
    out = tmp_path_factory.mktemp("long") / "out"
    proc = subprocess.Popen(
        [
            "coap-client-notls",
            "-s",
            str(int(LONG_SILENCE + 6)),
            "-w",
            "-o",
            str(out),
            gw.url(f"obs/long?{AUTH}"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def notify() -> None:
        gevent.sleep(2)
        target.notify("obs/long", b"early")
        gevent.sleep(LONG_SILENCE)
        target.notify("obs/long", b"late")

    notifier = gevent.spawn(notify)
    yield proc, out, notifier
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    notifier.kill()


def client(*args: str) -> tuple[bytes, str]:
    r = coap_client("-B", "8", *args)
    return r.stdout, r.stderr.decode(errors="replace") + r.stdout.decode(errors="replace")


def seen(target: CoapTarget, path: str) -> list[dict[str, Any]]:
    return [e for e in target.log() if e["path"] == path]


# -- methods, credentials, refusals ----------------------------------------------------------------------


def test_every_method_is_forwarded_with_credentials(
    gw: Gw, target: CoapTarget, long_observation: Any
) -> None:
    out, _ = client("-A", "50", gw.url(f"dev1/m?x=1&{AUTH}&y=2"))
    doc = json.loads(out)
    assert doc == {"path": "dev1/m", "query": ["x=1", "y=2"], "accept": 50}  # auth removed, the rest kept
    out, _ = client("-m", "put", "-t", "0", "-e", "put-body", gw.url(f"dev1/m?{AUTH}"))
    assert out.strip() == b"put-body"
    out, _ = client("-m", "post", "-t", "50", "-e", '{"a":1}', gw.url(f"dev1/m?{AUTH}"))
    assert out.strip() == b'{"a":1}'
    _, err = client("-m", "delete", gw.url(f"dev1/m?{AUTH}"))
    assert "4." not in err and "5." not in err
    log = seen(target, "dev1/m")
    assert [e["method"] for e in log[-4:]] == ["GET", "PUT", "POST", "DELETE"]
    assert log[-3]["content_format"] == 0 and log[-2]["content_format"] == 50
    assert all("auth" not in "".join(e["query"]) for e in log)


def test_etag_and_if_match_reach_the_target(gw: Gw, target: CoapTarget) -> None:
    with RawCoap(gw.coap) as c:
        first = c.request(Code.GET, f"dev1/etag?{AUTH}")
        assert first.code == Code.CONTENT and first.opt.etag
        again = c.request(Code.GET, f"dev1/etag?{AUTH}", etags=[first.opt.etag])
        assert again.code == Code.VALID  # the target compared the ETag the client sent
        put = c.request(Code.PUT, f"dev1/etag?{AUTH}", payload=b"v", if_match=[b"\x01\x02"])
        assert put.code == Code.CHANGED
    assert seen(target, "dev1/etag")[-1]["if_match"] == ["0102"]


@pytest.mark.parametrize("method", ["get", "post", "put", "delete"])
def test_no_or_wrong_credentials_get_4_01_and_the_target_sees_nothing(
    gw: Gw, target: CoapTarget, method: str
) -> None:
    path = f"dev1/noauth-{method}"
    for query in ("", "?auth=dev1:wrong", "?auth="):
        _, err = client("-m", method, "-e", "x", gw.url(path + query))
        assert "4.01" in err, (query, err)
    assert seen(target, path) == []


@pytest.mark.parametrize("method", ["get", "post", "put", "delete"])
def test_a_forbidden_topic_gets_4_03_and_the_target_sees_nothing(
    gw: Gw, target: CoapTarget, method: str
) -> None:
    path = f"other/forbidden-{method}"
    _, err = client("-m", method, "-e", "x", gw.url(f"{path}?{AUTH}"))
    assert "4.03" in err, err
    assert seen(target, path) == []


def test_a_forbidden_observation_gets_4_03(gw: Gw, target: CoapTarget) -> None:
    _, err = client("-s", "2", gw.url(f"other/obs?{AUTH}"))
    assert "4.03" in err, err
    assert seen(target, "other/obs") == []


def test_a_refusal_is_a_piggybacked_ack_with_the_request_s_id_and_token(gw: Gw) -> None:
    with RawCoap(gw.coap) as c:
        for path, code in (("dev1/x", Code.UNAUTHORIZED), (f"other/x?{AUTH}", Code.FORBIDDEN)):
            req = c.build(Code.POST, path, payload=b"x")
            c.send(req)
            answer = c.recv()
            assert (answer.mtype, answer.mid, answer.token, answer.code) == (ACK, req.mid, req.token, code)
        req = c.build(Code.GET, "dev1/x", mtype=NON)
        c.send(req)
        answer = c.recv()
        assert (answer.mtype, answer.token, answer.code) == (NON, req.token, Code.UNAUTHORIZED)


def test_con_and_non_requests_are_forwarded_as_such(gw: Gw, target: CoapTarget) -> None:
    with RawCoap(gw.coap) as c:
        con = c.build(Code.PUT, f"dev1/types?{AUTH}", payload=b"c")
        c.send(con)
        answer = c.recv()
        assert (answer.mtype, answer.mid, answer.token, answer.code) == (
            ACK,
            con.mid,
            con.token,
            Code.CHANGED,
        )
        non = c.build(Code.PUT, f"dev1/types?{AUTH}", payload=b"n", mtype=NON)
        c.send(non)
        answer = c.recv()
        assert (answer.mtype, answer.token, answer.code, answer.payload) == (
            NON,
            non.token,
            Code.CHANGED,
            b"n",
        )
    assert [e["mtype"] for e in seen(target, "dev1/types")] == ["CON", "NON"]


def test_unknown_critical_option_and_forward_proxying_are_refused(gw: Gw, target: CoapTarget) -> None:
    with RawCoap(gw.coap) as c:
        req = c.build(Code.GET, f"dev1/opt?{AUTH}")
        from aiocoap.optiontypes import OpaqueOption

        req.opt.add_option(OpaqueOption(65003, b"x"))  # critical, and unsafe to forward
        c.send(req)
        assert c.recv().code == Code.BAD_OPTION
        assert (
            c.request(Code.GET, f"dev1/opt?{AUTH}", proxy_scheme="coap").code == Code.PROXYING_NOT_SUPPORTED
        )
    assert seen(target, "dev1/opt") == []


# -- block-wise ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "block"), [(4096, "64"), (65536, "1024")])
def test_block_wise_both_ways_without_truncation(
    gw: Gw, target: CoapTarget, tmp_path: Path, size: int, block: str
) -> None:
    body = os.urandom(size)
    sent, echoed, fetched = tmp_path / "in", tmp_path / "echo", tmp_path / "big"
    sent.write_bytes(body)
    url = gw.url(f"dev1/blob?{AUTH}")
    _, err = client("-m", "put", "-b", block, "-f", str(sent), "-o", str(echoed), url)
    assert echoed.read_bytes() == body, err  # Block1 up to the target, its echo back in Block2
    entry = seen(target, "dev1/blob")[-1]
    assert (entry["size"], entry["sha256"]) == (size, hashlib.sha256(body).hexdigest())
    _, err = client("-b", block, "-o", str(fetched), gw.url(f"big/{size}?{AUTH}"))
    assert fetched.read_bytes() == pattern(size), err


def test_a_block_wise_upload_to_a_forbidden_topic_is_refused_at_the_first_block(
    gw: Gw, target: CoapTarget, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(os.urandom(4096))
    _, err = client("-m", "put", "-b", "64", "-f", str(tmp_path / "in"), gw.url(f"other/blob?{AUTH}"))
    assert "4.03" in err
    assert seen(target, "other/blob") == []


# -- Observe -------------------------------------------------------------------------------------------


def _wait(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_observe_relays_notifications_and_a_reset_ends_the_target_s_observation(
    gw: Gw, target: CoapTarget
) -> None:
    with RawCoap(gw.coap) as c:
        reg = c.build(Code.GET, f"obs/rst?{AUTH}", observe=0)
        c.send(reg)
        first = c.recv()
        assert (first.mtype, first.token, first.code) == (ACK, reg.token, Code.CONTENT)
        assert first.opt.observe is not None
        assert target.observers().get("obs/rst") == 1
        numbers = [first.opt.observe]
        for value in (b"a", b"b"):
            target.notify("obs/rst", value)
            note = c.recv()
            assert (note.token, note.payload, note.mtype) == (reg.token, value, CON)
            numbers.append(note.opt.observe)
            c.ack(note)
        assert numbers == sorted(numbers) and len(set(numbers)) == 3
        target.notify("obs/rst", b"c")
        note = c.recv()
        c.rst(note)  # the client is no longer interested
        _wait(lambda: "obs/rst" not in target.observers())
    _wait(lambda: gw.state("observations") <= 1)  # only the long observation remains


def test_deregistration_ends_the_target_s_observation(gw: Gw, target: CoapTarget) -> None:
    with RawCoap(gw.coap) as c:
        reg = c.build(Code.GET, f"obs/dereg?{AUTH}", observe=0)
        c.send(reg)
        assert c.recv().opt.observe is not None
        assert target.observers().get("obs/dereg") == 1
        bye = c.build(Code.GET, f"obs/dereg?{AUTH}", observe=1, token=reg.token)
        c.send(bye)
        answer = c.recv()
        assert (answer.token, answer.code, answer.opt.observe) == (reg.token, Code.CONTENT, None)
        _wait(lambda: "obs/dereg" not in target.observers())
    # libcoap deregisters when its -s time is up
    out, _ = client("-s", "2", gw.url(f"obs/dereg2?{AUTH}"))
    assert out.strip() == b"0"
    _wait(lambda: "obs/dereg2" not in target.observers())


def test_the_target_ending_an_observation_ends_the_client_s(gw: Gw, target: CoapTarget) -> None:
    with RawCoap(gw.coap) as c:
        reg = c.build(Code.GET, f"obs/end?{AUTH}", observe=0)
        c.send(reg)
        assert c.recv().opt.observe is not None
        target.end("obs/end")
        last = c.recv()
        c.ack(last)
        assert (last.token, last.code, last.opt.observe) == (reg.token, Code.NOT_FOUND, None)
    _wait(lambda: gw.state("observations") <= 1)


def test_a_large_notification_is_served_block_wise(gw: Gw, target: CoapTarget, tmp_path: Path) -> None:
    with RawCoap(gw.coap) as c:
        reg = c.build(Code.GET, f"obs/large?{AUTH}", observe=0)
        c.send(reg)
        assert c.recv().opt.observe is not None
        body = pattern(3000)
        target.notify("obs/large", body)
        note = c.recv()
        c.ack(note)
        assert note.opt.block2 is not None and note.opt.block2.more and note.opt.observe is not None
        rest = c.request(Code.GET, f"obs/large?{AUTH}", block2=(1, False, note.opt.block2.size_exponent))
        assert note.payload + rest.payload == body
        c.rst(note)


# -- the target down ---------------------------------------------------------------------------------------


def test_an_unreachable_target_is_5_02_and_a_silent_one_5_04(gw: Gw) -> None:
    _, err = client(gw.url(f"dev1/x?{AUTH}", gw.dead))
    assert "5.02" in err, err
    _, err = client(gw.url(f"dev1/x?{AUTH}", gw.silent))
    assert "5.04" in err, err  # the gateway's answer, not the client giving up


# -- garbage -------------------------------------------------------------------------------------------


def test_garbage_from_many_ports_leaves_no_state(gw: Gw) -> None:
    rss_before = gw.rss_kib()
    before = {kind: gw.state(kind) for kind in ("observations", "block1", "block2")}
    junk = [
        b"",
        b"\xff" * 3,
        b"\x40",  # a header cut short
        b"\x48\x01\x00\x01",  # token length 8, no token
        b"\x40\x01\x00\x01\xff",  # payload marker without payload
        b"\x40\x01\x00\x01\xd0",  # option extended length missing
        b"\x50\x01\x00\x01",  # NON GET, no auth
        b"\x40\x03\x00\x01\xb4dev1\xff" + b"x" * 2000,  # CON PUT, no auth, over 1,280 bytes
        b"\x40\x03\x00\x01\xb4dev1\xd1\x02\x06",  # a Block1 without credentials
    ]
    sockets = []
    for i in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        for n, datagram in enumerate(junk):
            s.sendto(datagram + os.urandom(i % 7), ("127.0.0.1", gw.coap))
            if n % 3 == 0:
                s.sendto(os.urandom(1 + (i * 13 + n) % 200), ("127.0.0.1", gw.coap))
    time.sleep(0.5)
    for s in sockets:
        s.close()
    _wait_answering(gw.coap)
    assert {kind: gw.state(kind) for kind in before} == before
    assert gw.rss_kib() - rss_before < 8 * 1024


# -- handler notifications (in process) -----------------------------------------------------------------


class Recorder(HandlerActor):
    events: ClassVar[list[tuple[str, Any]]] = []

    def auth_connect(self, session: Session) -> Grant | Refusal | None:
        return Grant(("dev1/#",), ("obs/#",)) if session.username == "dev1" else None

    def on_subscribe(self, session: Session, topic_filters: list[str]) -> None:
        self.events.append(("subscribe", topic_filters))

    def on_unsubscribe(self, session: Session, topic_filters: list[str]) -> None:
        self.events.append(("unsubscribe", topic_filters))

    def on_publish(self, session: Session, topic: str, payload: bytes) -> None:
        self.events.append(("publish", topic))


def test_observation_tells_on_subscribe_and_deregistration_on_unsubscribe(
    target: CoapTarget, tmp_path: Path
) -> None:
    port = free_udp_port()
    cfg = tmp_path / "lib.toml"
    cfg.write_text(
        f"""
[metrics]
address = ""
[[listener]]
name = "coap"
protocol = "coap"
address = "127.0.0.1:{port}"
target = "coap://127.0.0.1:{target.port}"
[auth]
handler = "recorder"
"""
    )
    Recorder.events.clear()
    gateway = Gateway(load_settings(cfg), LISTENERS, {**HANDLERS, "recorder": Recorder})
    gateway.start()
    try:
        with RawCoap(port) as c:
            assert c.request(Code.POST, f"dev1/p?{AUTH}", payload=b"1").code == Code.CHANGED
            reg = c.build(Code.GET, f"obs/lib?{AUTH}", observe=0)
            c.send(reg)
            assert c.recv().opt.observe is not None
            _wait(lambda: ("subscribe", ["obs/lib"]) in Recorder.events)
            assert ("unsubscribe", ["obs/lib"]) not in Recorder.events
            c.send(c.build(Code.GET, f"obs/lib?{AUTH}", observe=1, token=reg.token))
            c.recv()
            _wait(lambda: ("unsubscribe", ["obs/lib"]) in Recorder.events)
        assert ("publish", "dev1/p") in Recorder.events
    finally:
        gateway.stop()


# -- the long observation (started by the first test) ---------------------------------------------------


def test_an_observation_outlives_30_s_of_silence(gw: Gw, target: CoapTarget, long_observation: Any) -> None:
    proc, out, notifier = long_observation
    notifier.join(timeout=LONG_SILENCE + 10)
    _wait(lambda: out.exists() and b"late" in out.read_bytes(), timeout=5)
    assert out.read_bytes().split() == [b"0", b"early", b"late"]
    proc.wait(timeout=15)
    _wait(lambda: "obs/long" not in target.observers())
