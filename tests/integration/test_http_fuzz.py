"""Fuzzing, http listener (the CI slice, like test_fuzz_live.py for MQTT): a table of adversarial
request streams against the reverse proxy (smuggling CL.TE / TE.CL / TE.TE, bad chunk sizes, chunk
extensions and trailers, huge and many headers, NULs, bare CR / LF, invalid methods, absolute-form targets,
HTTP/0.9, the HTTP/2 preface) and random mutations of a valid request, while a well-behaved keep-alive
client keeps asking.

Every stream is answered 4xx (501 / 505 where the RFC says so) or closed within a bound, nothing escapes in
the gateway's log, the target never receives the requests hidden in the bodies, and the good client's
requests all succeed. The whole slice runs in a few seconds (``HTTP_FUZZ_SEED`` replays a mutation run).
"""

from __future__ import annotations

import http.client
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import gevent
import gevent.pool
import pytest

from tests.http_hardening_support import (
    AUTH,
    BASIC,
    Exchange,
    Log,
    RecordingTarget,
    exchange,
    request,
    smuggled,
)
from tests.servers import GatewayProcess

CONFIG = """
shutdown_timeout = 3.0
[metrics]
address = ""

[[listener]]
name = "fuzz"
protocol = "http"
address = "127.0.0.1:{{port}}"
target = "http://127.0.0.1:{target}"
path_prefix = "/api"
max_packet_size = 65536
header_timeout = 1.0
body_timeout = 1.0
idle_timeout = 1.0

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
"""

#: Seconds within which a stream must be answered and closed (the deadlines above are 1 s).
BOUND = 4.0
MUTATIONS = int(os.environ.get("HTTP_FUZZ_MUTATIONS", "300"))
CONCURRENCY = 64

_H = "Host: gw\r\n" + AUTH
_SM = smuggled()
_CHUNKED = _H + "Transfer-Encoding: chunked\r\n"


def _post(headers: str, body: bytes) -> bytes:
    return request("POST", headers=_H + headers, body=body)


def _chunked(body: bytes) -> bytes:
    return request("POST", headers=_CHUNKED, body=body)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    statuses: frozenset[int] = frozenset({400})


def _cases() -> list[Case]:
    c: list[tuple[str, bytes, set[int]]] = [
        # smuggling: CL.TE, TE.CL, TE.TE
        ("cl.te", _post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG" + _SM), {400}),
        (
            "te.cl",
            _post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"5c\r\n" + _SM + b"\r\n0\r\n\r\n"),
            {400},
        ),
        (
            "te.te-second-unknown",
            _post("Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n", b"0\r\n\r\n" + _SM),
            {400, 501},
        ),
        (
            "te.te-first-unknown",
            _post("Transfer-Encoding: cow\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + _SM),
            {501},
        ),
        ("te.te-space-before-colon", _post("Transfer-Encoding : chunked\r\n", b"0\r\n\r\n" + _SM), {400}),
        ("te.te-xchunked", _post("Transfer-Encoding: xchunked\r\n", _SM), {400, 501}),
        ("te.te-chunked-identity", _post("Transfer-Encoding: chunked, identity\r\n", _SM), {400, 501}),
        ("te.te-identity", _post("Transfer-Encoding: identity\r\n", _SM), {400, 501}),
        ("te.te-quoted", _post('Transfer-Encoding: "chunked"\r\n', _SM), {400, 501}),
        ("te.te-param", _post("Transfer-Encoding: chunked;q=1\r\n", _SM), {400, 501}),
        ("te.te-nul", _post("Transfer-Encoding: chunked\x00\r\n", b"0\r\n\r\n" + _SM), {400}),
        ("te.te-vtab", _post("Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n" + _SM), {400}),
        ("te.te-fold", _post("Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n" + _SM), {400}),
        ("te.te-name-cr", _post("Transfer-Encoding\r\n: chunked\r\n", b"0\r\n\r\n" + _SM), {400}),
        ("te.te-bare-cr", _post("X: y\rTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + _SM), {400}),
        ("te-http10", request("POST", headers=_CHUNKED, body=b"0\r\n\r\n" + _SM, version="HTTP/1.0"), {400}),
        ("cl-twice-differing", _post("Content-Length: 0\r\nContent-Length: 92\r\n", _SM), {400}),
        ("cl-list", _post("Content-Length: 0, 92\r\n", _SM), {400}),
        ("cl-plus", _post("Content-Length: +0\r\n", _SM), {400}),
        ("cl-negative", _post("Content-Length: -1\r\n", _SM), {400}),
        ("cl-hex", _post("Content-Length: 0x0\r\n", _SM), {400}),
        ("cl-exponent", _post("Content-Length: 0e1\r\n", _SM), {400}),
        ("cl-inner-space", _post("Content-Length: 0 0\r\n", _SM), {400}),
        ("cl-non-ascii-digit", _post("Content-Length: \xd9\xa5\r\n", _SM), {400}),
        # chunked bodies
        ("chunk-absurd", _chunked(b"ffffffffffffffffffff\r\nx\r\n"), {400, 413}),
        ("chunk-over-max", _chunked(b"fffffffffff\r\n" + b"x" * 70000), {413}),
        ("chunk-negative", _chunked(b"-5\r\nhello\r\n0\r\n\r\n"), {400}),
        ("chunk-0x", _chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), {400}),
        ("chunk-empty-size", _chunked(b"\r\nhello\r\n0\r\n\r\n"), {400}),
        ("chunk-leading-space", _chunked(b" 5\r\nhello\r\n0\r\n\r\n"), {400}),
        ("chunk-size-lf", _chunked(b"5\nhello\r\n0\r\n\r\n"), {400}),
        ("chunk-overrun", _chunked(b"3\r\nhello\r\n0\r\n\r\n" + _SM), {400}),
        ("chunk-huge-extension", _chunked(b"5;" + b"e" * 9000 + b"\r\nhello\r\n0\r\n\r\n"), {400}),
        ("chunk-bad-trailer", _chunked(b"5\r\nhello\r\n0\r\nBad Trailer: x\r\n\r\n" + _SM), {400}),
        ("chunk-huge-trailer", _chunked(b"5\r\nhello\r\n0\r\nT: " + b"t" * 9000 + b"\r\n\r\n"), {400}),
        ("chunk-truncated", _chunked(b"5\r\nhel"), {400, 408}),
        # header syntax and size
        ("headers-10000", request(headers=_H + "X-N: v\r\n" * 10_000), {431}),
        ("header-1mib", request(headers=_H + "X-Big: " + "a" * (1 << 20) + "\r\n"), {431}),
        (
            "headers-total-over",
            request(headers=_H + "".join(f"X-{i}: {'v' * 8000}\r\n" for i in range(9))),
            {431},
        ),
        ("nul-in-name", request(headers=_H + "X\x00A: b\r\n"), {400}),
        ("nul-in-value", request(headers=_H + "X-A: \x00\r\n"), {400}),
        ("bare-lf-in-value", request(headers=_H + "X-A: a\nb\r\n"), {400}),
        ("bare-cr-line-end", request(headers=_H + "X-A: a\rX-B: b\r\n"), {400}),
        ("no-colon", request(headers=_H + "NoColon\r\n"), {400}),
        ("empty-name", request(headers=_H + ": v\r\n"), {400}),
        ("obs-fold", request(headers=_H + "X-A: a\r\n\tb\r\n"), {400}),
        ("duplicate-host", request(headers=_H + "Host: evil\r\n"), {400}),
        ("host-missing", request(headers=AUTH), {400}),
        ("header-name-utf8", request(headers=_H + "X-Ä: v\r\n"), {400}),
        # request line
        ("method-with-space", b"G ET /api/dev1/x HTTP/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        ("method-nul", b"GET\x00 /api/dev1/x HTTP/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        ("method-separator", b"GE(T /api/dev1/x HTTP/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        ("absolute-form", b"GET http://evil/api/dev1/x HTTP/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        ("authority-form", b"CONNECT evil:443 HTTP/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        ("asterisk-form", b"OPTIONS * HTTP/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        ("raw-utf8-target", b"GET /api/dev1/\xc3\xa9 HTTP/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        ("target-with-nul", b"GET /api/dev1/\x00 HTTP/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        (
            "target-too-long",
            b"GET /api/dev1/" + b"a" * 9000 + b" HTTP/1.1\r\n" + _H.encode() + b"\r\n",
            {414},
        ),
        ("http-0.9", b"GET /api/dev1/x\r\n", {400}),
        ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {505}),
        ("version-lowercase", b"GET /api/dev1/x http/1.1\r\n" + _H.encode() + b"\r\n", {400}),
        ("version-two-digits", b"GET /api/dev1/x HTTP/1.10\r\n" + _H.encode() + b"\r\n", {400}),
        ("version-3", b"GET /api/dev1/x HTTP/3.0\r\n" + _H.encode() + b"\r\n", {505}),
        ("tls-client-hello", bytes.fromhex("16030100a5010000a10303") + os.urandom(64), {400, 408}),
        ("binary-noise", bytes(range(256)) + b"\r\n\r\n", {400}),
        ("only-crlfs", b"\r\n\r\n\r\n", {400}),
        # deadlines
        ("head-unfinished", b"GET /api/dev1/x HTTP/1.1\r\nHost: gw\r\n", {408}),
        ("body-unfinished", _post("Content-Length: 100\r\n", b"short"), {408}),
    ]
    return [Case(name, data, frozenset(statuses)) for name, data, statuses in c]


CASES = _cases()


def _problems(case: Case, got: Exchange, elapsed: float) -> list[str]:
    problems = []
    if not got.closed:
        problems.append(f"not closed within {BOUND}s")
    if got.statuses[:1] and got.statuses[0] not in case.statuses:
        problems.append(f"status {got.statuses[0]}, expected one of {sorted(case.statuses)}")
    if not got.statuses and not got.reset:
        problems.append("closed without an answer")
    if len(got.statuses) > 1:
        problems.append(f"more than one response: {got.statuses}")
    if elapsed > BOUND + 1:
        problems.append(f"took {elapsed:.1f}s")
    return problems


# -- mutations -------------------------------------------------------------------------------------------

_BASES = [
    request(
        "POST",
        headers=_H + "Content-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n",
        body=b"0123456789abcdef0123456789abcdef",
    ),
    request(
        "PUT",
        headers=_H + "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n",
        body=b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n",
    ),
    request(
        path=f"/api/dev1/caf%C3%A9?a=1&authorization=Basic%20{BASIC}",
        headers="Host: gw\r\nConnection: close\r\nAccept: */*\r\n",
    ),
    request("GET", path="/api/dev1/x", headers=_H, version="HTTP/1.0"),
]
_INTERESTING = b"\r\n\x00 \t:,;\x7f\x80\xff0-+"


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four random edits: a byte changed, inserted (often a delimiter) or deleted, a line doubled or
    dropped, the stream cut."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(out) + 1)
        if kind == 0 and pos < len(out):
            out[pos] = rng.randrange(256)
        elif kind == 1:
            out[pos:pos] = bytes([rng.choice(_INTERESTING)])
        elif kind == 2 and pos < len(out):
            del out[pos]
        elif kind in (3, 4):
            lines = bytes(out).split(b"\r\n")
            i = rng.randrange(len(lines))
            if kind == 3:
                lines.insert(i, lines[i])
            else:
                del lines[i]
            out = bytearray(b"\r\n".join(lines))
        else:
            out = out[:pos]
    return bytes(out)


def _mutation_problems(got: Exchange, elapsed: float) -> list[str]:
    problems = []
    bad = [s for s in got.statuses if s >= 500 and s not in (501, 505)]
    if bad:
        problems.append(f"server errors {bad}")
    if not got.closed:
        problems.append(f"not closed within {BOUND}s")
    if elapsed > BOUND + 1:
        problems.append(f"took {elapsed:.1f}s")
    return problems


# -- the good client -------------------------------------------------------------------------------------


class GoodClient:
    """Keep-alive GETs with valid credentials in a loop; every one must be 200."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self.stopped = False
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Basic {BASIC}"}
        while not self.stopped:
            start = time.monotonic()
            try:
                conn.request("GET", f"/api/dev1/good/{uuid.uuid4().hex[:4]}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.failures.append(f"status {resp.status}")
                else:
                    self.ok += 1
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.slowest = max(self.slowest, time.monotonic() - start)
            gevent.sleep(0.01)
        conn.close()

    def stop(self) -> None:
        self.stopped = True
        self.greenlet.join(15)


# -- tests -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target() -> Iterator[RecordingTarget]:
    t = RecordingTarget()
    yield t
    t.stop()


@pytest.fixture(scope="module")
def gw(target: RecordingTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("http-fuzz"), CONFIG.format(target=target.port))
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def _timed(port: int, data: bytes) -> tuple[Exchange, float]:
    start = time.monotonic()
    got = exchange(port, data, wait=BOUND)
    return got, time.monotonic() - start


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_adversarial_stream(gw: GatewayProcess, target: RecordingTarget, case: Case) -> None:
    log = Log(gw.stderr)
    before = len(target.seen)
    got, elapsed = _timed(gw.port, case.data)
    assert not _problems(case, got, elapsed), (_problems(case, got, elapsed), got.data[:300])
    assert target.seen[before:] == [], [(s.method, s.path) for s in target.seen[before:]]
    assert not log.escapes(0.05), log.new()[-3000:]


def test_storm_of_adversarial_and_mutated_streams_while_a_good_client_is_served(
    gw: GatewayProcess, target: RecordingTarget
) -> None:
    seed = int(os.environ.get("HTTP_FUZZ_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    streams = [(c.name, c.data, c) for c in CASES] + [
        (f"mutation-{i}", mutate(rng, rng.choice(_BASES)), None) for i in range(MUTATIONS)
    ]
    rng.shuffle(streams)
    log = Log(gw.stderr)
    good = GoodClient(gw.port)
    pool = gevent.pool.Pool(CONCURRENCY)
    problems: list[str] = []

    def one(item: tuple[str, bytes, Case | None]) -> None:
        name, data, case = item
        got, elapsed = _timed(gw.port, data)
        found = _problems(case, got, elapsed) if case else _mutation_problems(got, elapsed)
        if found:
            problems.append(f"{name}: {found} {data[:120]!r} -> {got.data[:120]!r}")

    started = time.monotonic()
    pool.map(one, streams)
    took = time.monotonic() - started
    good.stop()
    assert not problems, f"seed {seed}:\n" + "\n".join(problems[:20])
    assert not target.smuggled(), f"seed {seed}: a smuggled request reached the target"
    assert good.ok >= 10 and not good.failures, (good.ok, good.failures[:5])
    assert good.slowest < 5.0, f"the good client waited {good.slowest:.1f}s"
    assert not log.escapes(), f"seed {seed}:\n" + "\n".join(log.escapes(0))
    assert took < 60, took  # a bound for the slice, not a measurement
