"""The fast path of CoAP -> MQTT mode (protocols/coap/fast_publish.py): which datagrams it takes, that its
answers are exactly aiocoap's (the slow path's) for the same requests, and its message deduplication.

The slow path's answer to a request is obtained from the same request plus an unknown *elective* option
(number 2052): aiocoap ignores it (RFC 7252 §5.4.1), the fast path never takes a request with an option it
does not know. The unit tests show that this one option is what decides which path a datagram takes."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from ferryman.protocols.coap.auth import INVALID, Credentials, credentials_from_queries, credentials_of
from ferryman.protocols.coap.codec import ACK, CON, NON, URI_PATH, URI_QUERY, Datagram, encode, parse
from ferryman.protocols.coap.fast_publish import Dedup, FastPublish
from tests.http_support import Subscriber
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
publish_qos = 1
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["fast/#"]
[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "coap-fast-{uid}"
"""

ELECTIVE = 2052  # unknown to everyone, even: elective (aiocoap ignores it; the fast path declines it)
POST, PUT = 0x02, 0x03


def request(
    mtype: int,
    mid: int,
    token: bytes,
    path: str,
    queries: list[str],
    payload: bytes = b"x",
    code: int = POST,
    extra: list[tuple[int, bytes]] | None = None,
) -> bytes:
    options = [(URI_PATH, s.encode()) for s in path.split("/") if s]
    options += [(URI_QUERY, q.encode()) for q in queries]
    options += extra or []
    return encode(mtype, code, mid, token, sorted(options, key=lambda o: o[0]), payload)


# -- units -----------------------------------------------------------------------------------------------


def test_credentials_as_the_slow_path_reads_them() -> None:
    cases: list[tuple[list[str], Credentials | None]] = [
        (["auth=dev1:pw1"], Credentials("dev1", b"pw1")),
        (["auth=dev1:pw:1"], Credentials("dev1", b"pw:1")),  # split at the first ':'
        (["x=1", "auth=tok3n"], Credentials(None, b"tok3n")),  # a bare token is a password
        (["auth="], INVALID),
        (["auth"], INVALID),
        (["qos=1"], None),
        ([], None),
        (["auth=a:b", "auth=c:d"], Credentials("a", b"b")),  # the first one counts
    ]
    for queries, expected in cases:
        assert credentials_from_queries(queries) == expected, queries
        # the slow path's parse of a whole request agrees
        request = aiocoap.Message(code=Code.POST, uri_path=("t",), uri_query=queries)
        assert credentials_of(request) == expected, queries


def test_dedup_is_bounded_by_count_and_by_age() -> None:
    d = Dedup(max_entries=3)
    for mid in range(5):
        d.add(("peer", mid), 247.0, now=0.0)
    assert len(d) == 3 and d.get(("peer", 0), 1.0) is None and d.get(("peer", 4), 1.0) is not None
    assert d.get(("peer", 4), 247.0) is None  # its lifetime is over
    d.add(("peer", 9), 145.0, now=250.0)  # any insertion drops what has aged out
    assert len(d) == 1


class _FakeCtx:
    def __init__(self) -> None:
        self.settings = SimpleNamespace(max_packet_size=1_048_576, publish_qos=1)
        self.stopping = False
        self.refusals: list[str] = []

    def count_refusal(self, what: str) -> None:
        self.refusals.append(what)


def test_what_the_fast_path_takes() -> None:
    """Unauthenticated requests: a taken datagram is answered at once (4.01), a declined one is not."""
    ctx = _FakeCtx()
    fast = FastPublish(SimpleNamespace(ctx=ctx, port=object()))  # type: ignore[arg-type]
    sent: list[bytes] = []
    taken = request(CON, 1, b"t", "fast/a", [], extra=[(12, b""), (17, b"\x32")])  # Content-Format, Accept
    assert fast(taken, ("::ffff:127.0.0.1", 5000, 0, 0), sent.append)
    answer = parse(sent[0])
    assert answer is not None and (answer.mtype, answer.code, answer.mid, answer.token) == (
        ACK,
        0x81,
        1,
        b"t",
    )
    assert ctx.refusals == ["connect"]
    assert fast(request(NON, 2, b"", "fast/a", [], code=PUT), ("127.0.0.1", 5000), sent.append)
    declined = [
        request(CON, 3, b"t", "fast/a", [], extra=[(ELECTIVE, b"1")]),  # an unknown option
        request(CON, 4, b"t", "fast/a", [], extra=[(27, b"\x06")]),  # Block1
        request(CON, 5, b"t", "fast/a", [], extra=[(6, b"")]),  # Observe
        request(CON, 6, b"t", "fast/a", [], extra=[(60, b"\x10")]),  # Size1
        request(CON, 7, b"t", "fast/a", [], code=0x01),  # GET
        request(CON, 8, b"t", "fast/a", [], code=0x04),  # DELETE
        request(CON, 9, b"t", "fast/a", [], payload=b"x" * 1025),  # over 1 KiB
        request(ACK, 10, b"t", "fast/a", []),
        encode(CON, POST, 11, b"t", [(URI_PATH, b"\xff\xfe")]),  # not UTF-8: aiocoap drops it
        b"\x40\x02\x00",  # truncated
    ]
    for data in declined:
        assert not fast(data, ("127.0.0.1", 5000), sent.append), data
    ctx.stopping = True
    assert not fast(request(CON, 12, b"t", "fast/a", []), ("127.0.0.1", 5000), sent.append)
    assert len(sent) == 2


# -- against a gateway -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = CONFIG.format(broker=broker.port, uid=uuid.uuid4().hex[:6])
    gateway = GatewayProcess(tmp_path_factory.mktemp("coap-fast-gw"), config)
    gateway.ports = [gateway.metrics_port]  # UDP cannot be waited for; metrics come up after the listeners
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


class Client:
    def __init__(self, port: int) -> None:
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.settimeout(5)
        self.s.connect(("127.0.0.1", port))

    def exchange(self, data: bytes) -> Datagram:
        self.s.send(data)
        return self.recv()

    def recv(self, timeout: float = 5) -> Datagram:
        self.s.settimeout(timeout)
        answer = parse(self.s.recv(2048))
        assert answer is not None
        return answer

    def nothing(self, timeout: float = 0.5) -> bool:
        self.s.settimeout(timeout)
        try:
            self.s.recv(2048)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.s.close()


@pytest.fixture
def client(gw: GatewayProcess) -> Iterator[Client]:
    c = Client(gw.port)
    yield c
    c.close()


CASES: list[tuple[str, list[str], str]] = [  # path, queries, the code expected
    ("fast/ok", ["auth=dev1:pw1", "qos=0"], "2.04"),
    ("fast/ok", ["auth=dev1:pw1", "qos=1", "retain=0"], "2.04"),
    ("fast/ok", [], "4.01"),
    ("fast/ok", ["auth="], "4.01"),
    ("fast/ok", ["auth=dev1:wrong"], "4.01"),
    ("fast/ok", ["auth=justatoken"], "4.01"),
    ("other/topic", ["auth=dev1:pw1"], "4.03"),
    ("fast/+/x", ["auth=dev1:pw1"], "4.00"),
    ("", ["auth=dev1:pw1"], "4.00"),
    ("fast/ok", ["auth=dev1:pw1", "qos=7"], "4.00"),
    ("fast/ok", ["auth=dev1:pw1", "retain=maybe"], "4.00"),
]


@pytest.mark.parametrize("mtype", [CON, NON], ids=["CON", "NON"])
def test_fast_answers_are_the_slow_paths(client: Client, mtype: int) -> None:
    mid = 0x1000 + mtype * 0x100
    for path, queries, code in CASES:
        got = []
        for extra in ([], [(ELECTIVE, b"1")]):  # the fast path, then aiocoap
            mid += 1
            token = uuid.uuid4().bytes[:4]
            answer = client.exchange(request(mtype, mid, token, path, queries, extra=extra))
            assert answer.token == token
            if mtype == CON:
                assert (answer.mtype, answer.mid) == (ACK, mid)  # piggybacked on the request's ACK
            else:
                assert answer.mtype == NON and answer.mid != mid  # its own message id
            assert answer.options == []
            got.append((answer.mtype, answer.code, answer.payload))
        assert f"{got[0][1] >> 5}.{got[0][1] & 31:02d}" == code, (path, queries, got)
        # Same type and code; the same diagnostic, but an answer to a peer that did not authenticate is cut
        # to the request's size (issue 11), and the aiocoap variant's request is larger by its option.
        assert got[0][:2] == got[1][:2], (path, queries)
        assert got[1][2].startswith(got[0][2]), (path, queries, got)
        if code not in ("4.01",):
            assert got[0] == got[1], (path, queries)


def test_a_retransmission_is_published_once(client: Client, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, "fast/dup/#", count=3).start()
    first = request(CON, 0x2001, b"c1", "fast/dup/con", ["auth=dev1:pw1", "qos=1"], payload=b"con")
    client.s.send(first)
    client.s.send(first)
    answer = client.recv()
    assert (answer.mtype, answer.code, answer.mid, answer.token) == (ACK, 0x44, 0x2001, b"c1")
    # The copy lands while the first is in progress (ignored) or, on a busy machine, after its answer
    # (answered again from the cache, RFC 7252 4.5): one answer or two equal ones, and one publish.
    client.s.settimeout(0.5)
    try:
        extra: Datagram | None = parse(client.s.recv(2048))
    except TimeoutError:
        extra = None
    assert extra is None or extra == answer
    assert client.nothing()
    again = client.exchange(first)  # after the answer: the same answer again, nothing published
    assert again == answer
    non = request(NON, 0x2002, b"n1", "fast/dup/non", ["auth=dev1:pw1", "qos=1"], payload=b"non")
    client.s.send(non)
    assert client.recv().code == 0x44
    client.s.send(non)  # a duplicate NON: ignored (RFC 7252 §4.5)
    assert client.nothing()
    marker = request(CON, 0x2003, b"m1", "fast/dup/marker", ["auth=dev1:pw1"], payload=b"marker")
    assert client.exchange(marker).code == 0x44
    assert sub.messages() == ["1 0 fast/dup/con con", "1 0 fast/dup/non non", "1 0 fast/dup/marker marker"]


def test_a_new_peer_waits_for_the_chain_then_hits_the_cache(gw: GatewayProcess) -> None:
    """The first request of a (peer, credentials) pair asks the handler chain (a task), the next ones hit
    the cache: both answered 2.04 by the fast path."""
    clients = [Client(gw.port) for _ in range(4)]
    try:
        for n, c in enumerate(clients):
            for k in range(3):
                answer = c.exchange(request(CON, 0x3000 + k, b"k", f"fast/new/{n}", ["auth=dev1:pw1"]))
                assert (answer.code, answer.mid) == (0x44, 0x3000 + k)
    finally:
        for c in clients:
            c.close()
