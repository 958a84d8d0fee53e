"""The proxy's one upstream CoAP client (``protocols/coap/upstream.py``) against a scripted target: a fake
datagram transport records what the client sends, the test answers through ``from_target``. No sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from ferryman.protocols.coap.codec import (
    ACK,
    BLOCK1,
    BLOCK2,
    CON,
    NON,
    OBSERVE,
    RST,
    URI_PATH,
    Datagram,
    encode,
    parse,
    uint,
)
from ferryman.protocols.coap.upstream import UpstreamClient

GET, PUT = 0x01, 0x03
CONTENT, CHANGED, CONTINUE = 0x45, 0x44, 0x5F


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[Datagram] = []

    def sendto(self, data: bytes) -> None:
        msg = parse(data)
        assert msg is not None
        self.sent.append(msg)

    def close(self) -> None:
        pass


def _client() -> tuple[UpstreamClient, FakeTransport]:
    client = UpstreamClient("127.0.0.1", 5683, 5.0, lambda *a: None, "t")
    transport = FakeTransport()
    client.transport = transport  # type: ignore[assignment]
    return client, transport


def _answer(client: UpstreamClient, to: Datagram, code: int, options: Any = (), payload: bytes = b"") -> None:
    client.from_target(encode(ACK, code, to.mid, to.token, list(options), payload))


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_large_payload_goes_up_in_block1_and_a_block2_answer_comes_back_whole() -> None:
    async def scenario() -> tuple[Datagram | None, Any, FakeTransport]:
        client, transport = _client()
        body = bytes(range(256)) * 10  # 2,560 bytes: three Block1 blocks of 1,024
        task = asyncio.ensure_future(client.request(PUT, [(URI_PATH, b"blob")], body, True))
        for number in range(3):
            await asyncio.sleep(0)
            sent = transport.sent[-1]
            more = number < 2
            assert sent.option(BLOCK1) == uint(number << 4 | (8 if more else 0) | 6)
            assert sent.payload == body[number * 1024 : (number + 1) * 1024]
            if more:
                _answer(client, sent, CONTINUE, [(BLOCK1, sent.option(BLOCK1))])
            else:  # the final answer, itself in Block2 blocks
                _answer(client, sent, CHANGED, [(BLOCK2, uint(8 | 6))], b"a" * 1024)
        await asyncio.sleep(0)
        fetch = transport.sent[-1]
        assert (fetch.code, fetch.payload, fetch.option(BLOCK1)) == (PUT, b"", None)
        assert fetch.option(BLOCK2) == uint(1 << 4 | 6)
        _answer(client, fetch, CHANGED, [(BLOCK2, uint(1 << 4 | 6))], b"b" * 10)
        response, problem = await task
        return response, problem, transport

    response, problem, _ = _run(scenario())
    assert problem is None and response is not None
    assert (response.code, response.payload, response.option(BLOCK2)) == (
        CHANGED,
        b"a" * 1024 + b"b" * 10,
        None,
    )


def test_an_observation_gets_every_notification_and_cancelling_deregisters() -> None:
    async def scenario() -> tuple[list[Any], FakeTransport, UpstreamClient]:
        client, transport = _client()
        got: list[Any] = []
        observation = client.observe(GET, [(URI_PATH, b"obs")], True, lambda m, p: got.append((m, p)))
        reg = transport.sent[-1]
        assert reg.option(OBSERVE) == b"" and reg.mtype == CON
        _answer(client, reg, CONTENT, [(OBSERVE, uint(1))], b"first")
        assert client.pending == 0  # established: no longer a request in flight
        client.from_target(encode(CON, CONTENT, 0x1234, reg.token, [(OBSERVE, uint(2))], b"second"))
        assert transport.sent[-1].mtype == ACK and transport.sent[-1].mid == 0x1234
        observation.cancel()
        bye = transport.sent[-1]
        assert (bye.mtype, bye.code, bye.token, bye.option(OBSERVE)) == (NON, GET, reg.token, uint(1))
        assert bye.option(URI_PATH) == b"obs"
        # the target's next notification is unwanted: RST
        client.from_target(encode(NON, CONTENT, 0x2345, reg.token, [(OBSERVE, uint(3))], b"third"))
        assert (transport.sent[-1].mtype, transport.sent[-1].mid) == (RST, 0x2345)
        return got, transport, client

    got, _, client = _run(scenario())
    assert [m.payload for m, _ in got] == [b"first", b"second"]
    assert client.by_token == {}


def test_an_icmp_error_fails_requests_and_observations_with_5_02() -> None:
    async def scenario() -> list[Any]:
        client, _ = _client()
        got: list[Any] = []
        client.send(GET, [(URI_PATH, b"x")], b"", True, lambda m, p: got.append(p))
        client.observe(GET, [(URI_PATH, b"o")], True, lambda m, p: got.append(p))
        client.target_error(ConnectionRefusedError(111, "Connection refused"))
        return got

    got = _run(scenario())
    assert [p[0] for p in got] == [0xA2, 0xA2] and "unreachable" in got[0][1]
