"""The fast path of CoAP proxy mode (``protocols/coap/proxy_fast.py``) from outside: one ``ferryman run`` with
a ``fast`` listener and a ``slow`` one (``COAP_PROXY_SLOW_LISTENERS=slow``: aiocoap on both sides, as before)
in front of the same aiocoap target, plus listeners in front of a silent and an unreachable target. The raw
UDP client shows message types, ids, tokens and options; ``coap-client-notls`` is the independent peer."""

from __future__ import annotations

import contextlib
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.coap_support import (
    ACK,
    CON,
    NON,
    CoapTarget,
    Code,
    Message,
    RawCoap,
    coap_client,
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
name = "fast"
protocol = "coap"
address = "127.0.0.1:{fast}"
target = "coap://127.0.0.1:{target}"
connect_timeout = 2.0
[[listener]]
name = "slow"
protocol = "coap"
address = "127.0.0.1:{slow}"
target = "coap://127.0.0.1:{target}"
connect_timeout = 2.0
[[listener]]
name = "silent"
protocol = "coap"
address = "127.0.0.1:{silent_listener}"
target = "coap://127.0.0.1:{silent}"
connect_timeout = 1.0
[[listener]]
name = "dead"
protocol = "coap"
address = "127.0.0.1:{dead_listener}"
target = "coap://127.0.0.1:{dead}"
connect_timeout = 1.0
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#", "big/#"]
"""

AUTH = "auth=dev1:pw1"


class Gw:
    def __init__(self, proc: GatewayProcess, ports: dict[str, int]) -> None:
        self.proc = proc
        self.ports = ports

    def state(self, listener: str, kind: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proc.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(rf'ferryman_coap_proxy_state{{kind="{kind}",listener="{listener}"}} (\S+)', text)
        assert m is not None, f"no state gauge {kind} for {listener}"
        return float(m.group(1))


@pytest.fixture(scope="module")
def target() -> Iterator[CoapTarget]:
    with CoapTarget() as t:
        yield t


@pytest.fixture(scope="module")
def gw(target: CoapTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    names = ("fast", "slow", "silent", "dead", "dead_target")
    ports = dict(zip(names, free_udp_ports(len(names)), strict=True))
    config = CONFIG.format(
        fast=ports["fast"],
        slow=ports["slow"],
        target=target.port,
        silent_listener=ports["silent"],
        silent=silent.getsockname()[1],
        dead_listener=ports["dead"],
        dead=ports["dead_target"],
    )
    proc = GatewayProcess(
        tmp_path_factory.mktemp("coap-fast"), config, ports=1, env={"COAP_PROXY_SLOW_LISTENERS": "slow"}
    )
    proc.start()
    try:
        for port in (ports["fast"], ports["slow"]):
            _wait_answering(port)
        yield Gw(proc, ports)
    finally:
        rc, err = proc.stop()
        silent.close()
        assert rc == 0 and "Traceback" not in err, err[-3000:]


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


def _seen(target: CoapTarget, path: str) -> list[dict[str, Any]]:
    return [e for e in target.log() if e["path"] == path]


def _ask(port: int, code: Code, path: str, payload: bytes = b"", mtype: Any = CON, **options: Any) -> Any:
    """One request; the answer as (type, code, token, payload, options), message ids checked."""
    with RawCoap(port) as c:
        req = c.build(code, path, payload=payload, mtype=mtype, **options)
        c.send(req)
        answer = c.recv(timeout=5)
        c.ack(answer)
        assert answer.token == req.token
        if mtype == CON:
            assert (answer.mtype, answer.mid) == (ACK, req.mid)  # piggybacked
        else:
            assert answer.mtype == NON
        opts = [(int(o.number), o.encode()) for o in answer.opt.option_list()]
        return answer.mtype, answer.code, len(answer.token), answer.payload, opts


CASES = [
    ("get", Code.GET, f"dev1/same?x=1&{AUTH}", b"", CON, {"accept": 50}),
    ("get-non", Code.GET, f"dev1/same?{AUTH}", b"", NON, {}),
    ("get-etag", Code.GET, f"dev1/same?{AUTH}", b"", CON, {"etags": [b"\x00\x01"]}),
    ("put", Code.PUT, f"dev1/same?{AUTH}", b"body", CON, {"content_format": 0}),
    ("post-non", Code.POST, f"dev1/same?{AUTH}", b'{"a":1}', NON, {"content_format": 50}),
    ("delete", Code.DELETE, f"dev1/same?{AUTH}", b"", CON, {}),
    ("put-if-match", Code.PUT, f"dev1/same?{AUTH}", b"v", CON, {"if_match": [b"\x01\x02"]}),
    ("no-auth", Code.POST, "dev1/same", b"x", CON, {}),
    ("no-auth-non", Code.GET, "dev1/same", b"", NON, {}),
    ("wrong-auth", Code.GET, "dev1/same?auth=dev1:wrong", b"", CON, {}),
    ("empty-auth", Code.PUT, "dev1/same?auth=", b"x", CON, {}),
    ("forbidden-get", Code.GET, f"other/x?{AUTH}", b"", CON, {}),
    ("forbidden-post", Code.POST, f"other/x?{AUTH}", b"x", NON, {}),
    ("forbidden-read", Code.GET, f"dev2/x?{AUTH}", b"", CON, {}),
]


@pytest.mark.parametrize(
    ("name", "code", "path", "payload", "mtype", "options"), CASES, ids=[c[0] for c in CASES]
)
def test_the_fast_path_answers_as_the_slow_path(
    gw: Gw, name: str, code: Code, path: str, payload: bytes, mtype: Any, options: dict[str, Any]
) -> None:
    fast = _ask(gw.ports["fast"], code, path, payload, mtype, **options)
    slow = _ask(gw.ports["slow"], code, path, payload, mtype, **options)
    assert fast == slow
    if name.startswith(("no-", "wrong", "empty")):
        assert fast[1] == Code.UNAUTHORIZED
    elif name.startswith("forbidden"):
        assert fast[1] == Code.FORBIDDEN


def test_the_fast_path_takes_plain_requests(gw: Gw, target: CoapTarget) -> None:
    """The target sees what the fast listener forwards: auth removed, the rest of the query kept; CON as
    CON, NON as NON; and the ``dedup`` state shows the fast path remembered the CON requests."""
    before = gw.state("fast", "dedup")
    out = coap_client(
        "-B", "5", "-A", "50", f"coap://127.0.0.1:{gw.ports['fast']}/dev1/lib?q=1&{AUTH}"
    ).stdout
    assert b'"query": ["q=1"]' in out and b'"accept": 50' in out
    with RawCoap(gw.ports["fast"]) as c:
        assert c.request(Code.PUT, f"dev1/lib?{AUTH}", payload=b"c").code == Code.CHANGED
    assert gw.state("fast", "dedup") >= before + 2
    assert gw.state("slow", "dedup") == 0
    log = _seen(target, "dev1/lib")
    assert [(e["method"], e["mtype"]) for e in log[-2:]] == [("GET", "CON"), ("PUT", "CON")]


def test_a_retransmitted_con_reaches_the_target_once(gw: Gw, target: CoapTarget) -> None:
    def answers(c: RawCoap, wait: float) -> list[bytes]:
        got: list[bytes] = []
        c.sock.settimeout(wait)
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(c.sock.recvfrom(2048)[0])
        return got

    with RawCoap(gw.ports["fast"]) as c:
        req = c.build(Code.POST, f"dev1/dedup?{AUTH}", payload=b"once")
        c.send(req)
        c.send(req)  # a retransmission: ignored while the first is in flight, answered again after it
        early = answers(c, 1.0)
        c.send(req)  # a retransmission after the answer: the same answer again
        late = answers(c, 1.0)
        assert 1 <= len(early) <= 2 and len(late) == 1
        assert len(set(early + late)) == 1  # byte for byte the first answer
        answer = Message.decode(late[0])
        assert (answer.mtype, answer.mid, answer.token, answer.code) == (
            ACK,
            req.mid,
            req.token,
            Code.CHANGED,
        )
    assert len(_seen(target, "dev1/dedup")) == 1


def test_a_silent_target_is_5_04_and_nothing_stays_pending(gw: Gw) -> None:
    for mtype in (CON, NON):
        answer = _ask(gw.ports["silent"], Code.POST, f"dev1/x?{AUTH}", b"x", mtype)
        assert answer[1] == Code.GATEWAY_TIMEOUT  # the gateway's answer, not the client giving up
    assert gw.state("silent", "pending") == 0


def test_an_unreachable_target_is_5_02(gw: Gw) -> None:
    assert _ask(gw.ports["dead"], Code.GET, f"dev1/x?{AUTH}")[1] == Code.BAD_GATEWAY
    assert gw.state("dead", "pending") == 0


def test_a_large_response_arrives_whole(gw: Gw) -> None:
    port = gw.ports["fast"]
    with RawCoap(port) as c:
        first = c.exchange(c.build(Code.GET, f"big/5000?{AUTH}"))  # no Block2: the fast path takes it
        assert first.opt.block2 is not None and first.opt.block2.more and len(first.payload) == 1024
        assert gw.state("fast", "fast_block2") == 1  # kept whole for the later blocks
        whole = c.request(Code.GET, f"big/5000?{AUTH}")
        assert whole.payload == pattern(5000)
    assert gw.state("fast", "fast_block2") == 0  # served to its last block: dropped
    out = coap_client("-B", "5", f"coap://127.0.0.1:{port}/big/4096?{AUTH}").stdout
    assert out.rstrip(b"\n") == pattern(4096).rstrip(b"\n")


def test_an_observation_and_block_wise_uploads_still_take_aiocoap_s_path(gw: Gw, target: CoapTarget) -> None:
    with RawCoap(gw.ports["fast"]) as c:
        reg = c.build(Code.GET, f"dev1/obsfast?{AUTH}", observe=0)
        c.send(reg)
        answer = c.recv()
        assert answer.token == reg.token and answer.code == Code.CONTENT
        c.send(c.build(Code.GET, f"dev1/obsfast?{AUTH}", observe=1, token=reg.token))
        c.recv()
    assert _seen(target, "dev1/obsfast")[0]["observe"] == 0
