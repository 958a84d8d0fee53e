"""Fuzzing the CoAP listener live (issue 11), like test_fuzz_live.py does MQTT: adversarial datagrams
(bad versions, token lengths 9-15, option nibble 15, extended deltas that overflow, hundreds of options,
repeated one-time critical options, unknown critical options, a payload marker without payload, malformed
Block options, random mutations of a valid request) from many source ports, against a CoAP -> MQTT
listener and a proxy-mode one. Every datagram is answered in CoAP terms (4.xx / 5.xx, an RST, an empty ACK)
or ignored; no answer to these unauthenticated peers is larger than the request; nothing escapes to the
log as a traceback; and a good ``coap-client-notls`` request succeeds before, during and after. Seeded,
bounded to a few seconds per listener.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from ferryman.protocols.coap.codec import (
    BLOCK1,
    BLOCK2,
    CON,
    NON,
    OBSERVE,
    URI_PATH,
    URI_QUERY,
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

[[listener]]
name = "proxy"
protocol = "coap"
address = "127.0.0.1:{proxy}"
target = "coap://127.0.0.1:{target}"
connect_timeout = 3.0

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "coap-fuzz-{uid}"
"""

SEED = 20260211
BATCH = 48
WAIT = 0.3


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, dict[str, int]]]:
    with (
        Mosquitto(tmp_path_factory.mktemp("coap-fuzz-mosquitto")) as broker,
        CoapTarget() as target,
    ):
        ports = dict(zip(("pub", "proxy"), free_udp_ports(2), strict=True))
        config = CONFIG.format(**ports, target=target.port, broker=broker.port, uid=uuid.uuid4().hex[:6])
        proc = GatewayProcess(tmp_path_factory.mktemp("coap-fuzz-gw"), config)
        proc.start()
        try:
            for port in ports.values():
                _wait_answering(port)
            yield proc, ports
        finally:
            rc, err = proc.stop()
        assert rc == 0, err[-3000:]


def _wait_answering(port: int) -> None:
    deadline = time.monotonic() + 10
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < deadline:
            s.sendto(encode(CON, 2, 7, b"w", [(URI_PATH, b"w")]), ("127.0.0.1", port))
            try:
                s.recvfrom(2048)
                return
            except TimeoutError:
                continue
    raise AssertionError(f"the listener on {port} never answered")


def _good(port: int, listener: str) -> None:
    """A good coap-client request succeeds (2.04 published / 2.04 from the target)."""
    uri = f"coap://127.0.0.1:{port}/dev1/good?auth=dev1:pw1"
    proc = subprocess.run(
        ["coap-client-notls", "-B", "5", "-m", "put", "-e", "ok", uri], capture_output=True, timeout=20
    )
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0 and "4." not in out and "5." not in out, f"{listener}: {out}"


# -- the corpus ------------------------------------------------------------------------------------------


def _valid(rng: random.Random) -> bytes:
    """A valid request without credentials (so every answer is one to an unauthenticated peer)."""
    options = [(URI_PATH, b"dev1"), (URI_PATH, b"fuzz"), (URI_QUERY, b"qos=0")]
    if rng.random() < 0.3:
        options.append((BLOCK1, bytes([rng.randrange(256)])))
    options.sort(key=lambda o: o[0])
    return encode(
        rng.choice((CON, NON)), rng.choice((1, 2, 3, 4)), rng.randrange(65536), b"tok", options, b"v"
    )


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        what = rng.random()
        if what < 0.5 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif what < 0.7 and buf:
            pos = rng.randrange(len(buf))
            del buf[pos : pos + rng.randint(1, 3)]
        elif what < 0.9:
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        else:
            buf = buf[: rng.randrange(len(buf) + 1)]
    return bytes(buf)


def enc(
    mtype: int, code: int, mid: int, token: bytes, options: list[tuple[int, bytes]], payload: bytes = b""
) -> bytes:
    return encode(mtype, code, mid, token, sorted(options, key=lambda o: o[0]), payload)


def corpus(rng: random.Random) -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []

    def add(name: str, data: bytes) -> None:
        cases.append((name, data))

    for mtype in (CON, NON):
        m = 0x40 | mtype << 4
        for version in (0, 2, 3):
            add(f"version-{version}", bytes((version << 6 | mtype << 4, 1, 0, 1)) + b"\xb1a")
        for tkl in range(9, 16):
            add(f"tkl-{tkl}", bytes((m | tkl, 2, 0, 2)) + b"t" * tkl + b"\xb1a")
            add(f"tkl-{tkl}-short", bytes((m | tkl, 2, 0, 3)))
        add("delta-15-length-0", bytes((m, 2, 0, 4, 0xF0, 0x00)))
        add("length-15", bytes((m, 2, 0, 5, 0x0F)) + b"x" * 20)
        add("delta-14-overflow", bytes((m, 2, 0, 6)) + bytes((0xE1, 0xFF, 0xFF, 0x41)) * 3)
        add("delta-13-past-end", bytes((m, 2, 0, 7, 0xD0)))
        add("length-14-past-end", bytes((m, 2, 0, 8, 0xBE, 0xFF, 0xFF, 0x61)))
        add("many-options", bytes((m, 2, 0, 9, 0xB0)) + b"\x00" * 1500)
        add("many-options-payload", bytes((m, 2, 0, 9, 0xB1, 0x61)) + b"\x01a" * 900 + b"\xffp")
        add("payload-marker-only", bytes((m, 2, 0, 10, 0xFF)))
        add("marker-after-option", bytes((m, 2, 0, 11, 0xB1, 0x61, 0xFF)))
        add("empty-with-token", bytes((m | 2, 0, 0, 12)) + b"tt")
        add("empty-with-payload", bytes((m, 0, 0, 13, 0xFF, 0x61)))
        for cls in (1, 6, 7):
            add(f"class-{cls}", bytes((m, cls << 5 | 1, 0, 14)) + b"\xb1a")
        add("uri-host-twice", enc(mtype, 1, 15, b"", [(3, b"a"), (3, b"b"), (URI_PATH, b"a")]))
        add("accept-twice", enc(mtype, 2, 16, b"", [(URI_PATH, b"a"), (17, b""), (17, b"\x32")]))
        add("if-none-match-1-byte", enc(mtype, 3, 17, b"", [(5, b"x"), (URI_PATH, b"a")]))
        add("uri-path-300", enc(mtype, 2, 18, b"", [(URI_PATH, b"p" * 300)]))
        for number in (9, 13, 19, 21, 25, 31, 65001, 2049):
            add(f"critical-{number}", enc(mtype, 2, 19, b"c", [(URI_PATH, b"a"), (number, b"v")]))
        for value in (
            b"\x07",
            b"\x0f",
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00\x00\x08",
            b"\x01\x02\x03\x04\x05",
        ):
            for block in (BLOCK1, BLOCK2):
                name = f"block{1 if block == BLOCK1 else 2}-{value.hex()}"
                add(name, enc(mtype, 2, 20, b"b", [(URI_PATH, b"a"), (block, value)], b"x"))
        add(
            "block1-twice",
            enc(mtype, 2, 21, b"b", [(URI_PATH, b"a"), (BLOCK1, b"\x0a"), (BLOCK1, b"\x0a")]),
        )
        add("observe-huge", enc(mtype, 1, 22, b"o", [(OBSERVE, b"\xff" * 9), (URI_PATH, b"a")]))
        add("not-utf8-path", enc(mtype, 2, 23, b"u", [(URI_PATH, b"\xff\xfe")]))
        add("ack-with-request", bytes((0x60, 1, 0, 24, 0xB1, 0x61)))
        add("rst-with-payload", bytes((0x70, 0, 0, 25, 0xFF, 0x61)))
        add("header-only", bytes((m, 1, 0, 26)))
    for _ in range(6):
        add("garbage", bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))))
    for n in range(240):
        add(f"mutation-{n}", _mutate(_valid(rng), rng))
    return cases


def _problem(name: str, request: bytes, answer: bytes) -> str | None:
    if len(answer) > len(request):
        return f"{name}: {len(answer)}-byte answer to a {len(request)}-byte request: {answer[:40].hex()}"
    msg = parse(answer)
    if msg is None:
        return f"{name}: an answer that is not CoAP: {answer.hex()}"
    cls = msg.code >> 5
    if msg.code == 0 and msg.mtype in (2, 3):
        return None  # an RST, or the empty ACK of a separate response
    if cls in (4, 5):
        return None
    return f"{name}: answered {cls}.{msg.code & 31:02d} (type {msg.mtype}) without credentials"


@pytest.mark.parametrize("listener", ["pub", "proxy"])
def test_adversarial_datagrams_are_answered_in_coap_terms(
    gw: tuple[GatewayProcess, dict[str, int]], listener: str
) -> None:
    proc, ports = gw
    port = ports[listener]
    log_start = len(proc.stderr())
    cases = corpus(random.Random(SEED))
    _good(port, listener)
    problems: list[str] = []
    answered = 0
    started = time.monotonic()
    for first in range(0, len(cases), BATCH):
        batch = cases[first : first + BATCH]
        socks = []
        try:
            for _, data in batch:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                socks.append(s)
                s.sendto(data, ("127.0.0.1", port))
            time.sleep(WAIT)
            for (name, data), s in zip(batch, socks, strict=True):
                while True:
                    try:
                        answer = s.recv(65536)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    answered += 1
                    problem = _problem(name, data, answer)
                    if problem:
                        problems.append(problem)
        finally:
            for s in socks:
                s.close()
        if first == BATCH * 3:
            _good(port, listener)  # during
    assert time.monotonic() - started < 60
    assert answered > len(cases) // 4, answered  # the test does see answers
    assert not problems, "\n".join(problems[:20])
    _good(port, listener)  # after
    log = proc.stderr()[log_start:]
    assert "Traceback" not in log, log[-3000:]
    assert "ERROR" not in log, log[-3000:]
