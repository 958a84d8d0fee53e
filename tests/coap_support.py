"""CoAP pieces for the tests and the proxy benchmark: a target CoAP server (aiocoap, its own process), a
raw-UDP CoAP client (messages encoded and decoded by aiocoap's sans-IO ``Message``, sent from plain
sockets, so tests see the exact message type, message id and token the gateway answers with) and
``coap-client-notls`` (libcoap, the independent peer).

The target server (``python -m tests.coap_support PORT``) answers every path:

- ``GET <path>``: a JSON echo of the request (path, query, accept, etags) with an ETag (2.03 Valid when the
  request's ETag matches);
- ``GET big/<n>``: ``n`` bytes of a fixed pattern (:func:`pattern`), block-wise when large;
- ``GET obs/<name>`` with Observe: an observable resource; ``POST _ctl/notify/obs/<name>`` sets its state
  (the payload) and notifies, ``POST _ctl/end/obs/<name>`` ends its observations (a final 4.04);
- ``PUT`` / ``POST <path>``: 2.04 Changed, the request payload echoed back with its Content-Format;
- ``DELETE <path>``: 2.02 Deleted;
- ``GET _ctl/log``: the requests seen (JSON list, ``_ctl`` requests excluded); ``POST _ctl/clear`` empties
  it; ``GET _ctl/observers``: ``{path: number of observations}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiocoap import message as _message
from aiocoap.numbers import codes as _codes
from aiocoap.numbers import types as _types

from tests.servers import free_ports

REPO = Path(__file__).resolve().parent.parent
PYTHON = (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)

CON, NON, ACK, RST = _types.CON, _types.NON, _types.ACK, _types.RST
Message = _message.Message
Code = _codes.Code


def pattern(n: int) -> bytes:
    """``n`` bytes that differ block to block (a truncated or reordered transfer does not match)."""
    unit = b"".join(f"{i:07d}\n".encode() for i in range(n // 8 + 1))
    return unit[:n]


# ----------------------------------------------------------------------------------------- target server


def _serve(port: int) -> None:  # pragma: no cover - runs in the target's own process
    from aiocoap import Context, resource
    from aiocoap.numbers.contentformat import ContentFormat

    log: list[dict[str, Any]] = []
    states: dict[str, bytes] = {}
    observers: dict[str, set[Any]] = {}

    def record(request: Any) -> None:
        log.append(
            {
                "method": str(request.code),
                "path": "/".join(request.opt.uri_path),
                "query": list(request.opt.uri_query),
                "size": len(request.payload),
                "sha256": hashlib.sha256(request.payload).hexdigest(),
                "content_format": None
                if request.opt.content_format is None
                else int(request.opt.content_format),
                "accept": None if request.opt.accept is None else int(request.opt.accept),
                "etags": [e.hex() for e in request.opt.etags],
                "if_match": [e.hex() for e in request.opt.if_match],
                "observe": request.opt.observe,
                "mtype": str(request.mtype),
            }
        )
        del log[:-1000]

    class Root(resource.ObservableResource):
        async def add_observation(self, request: Any, serverobservation: Any) -> None:
            path = "/".join(request.opt.uri_path)
            if not path.startswith("obs/"):
                return
            group = observers.setdefault(path, set())
            group.add(serverobservation)
            serverobservation.accept(lambda: group.discard(serverobservation))

        async def render(self, request: Any) -> Any:
            path = "/".join(request.opt.uri_path)
            if path.startswith("_ctl/"):
                return self.control(path[5:], request)
            record(request)
            code = request.code
            if code == Code.GET:
                if path.startswith("big/"):
                    body = pattern(int(path[4:]))
                    return Message(code=Code.CONTENT, payload=body, content_format=0)
                if path.startswith("obs/"):
                    return Message(code=Code.CONTENT, payload=states.get(path, b"0"), content_format=0)
                doc = {
                    "path": path,
                    "query": list(request.opt.uri_query),
                    "accept": None if request.opt.accept is None else int(request.opt.accept),
                }
                response = Message(
                    code=Code.CONTENT, payload=json.dumps(doc).encode(), content_format=ContentFormat.JSON
                )
                resource.hashing_etag(request, response)
                return response
            if code in (Code.PUT, Code.POST):
                cf = request.opt.content_format
                return Message(code=Code.CHANGED, payload=request.payload, content_format=cf)
            if code == Code.DELETE:
                return Message(code=Code.DELETED)
            return Message(code=Code.METHOD_NOT_ALLOWED)

        def control(self, what: str, request: Any) -> Any:
            if what == "log":
                return Message(code=Code.CONTENT, payload=json.dumps(log).encode())
            if what == "clear":
                log.clear()
                return Message(code=Code.CHANGED)
            if what == "observers":
                doc = {p: len(s) for p, s in observers.items() if s}
                return Message(code=Code.CONTENT, payload=json.dumps(doc).encode())
            if what.startswith("notify/"):
                path = what[7:]
                states[path] = request.payload
                for obs in list(observers.get(path, ())):
                    obs.trigger(Message(code=Code.CONTENT, payload=request.payload, content_format=0))
                return Message(code=Code.CHANGED)
            if what.startswith("end/"):
                path = what[4:]
                for obs in list(observers.get(path, ())):
                    obs.trigger(Message(code=Code.NOT_FOUND, payload=b"gone"), is_last=True)
                return Message(code=Code.CHANGED)
            return Message(code=Code.NOT_FOUND)

    async def main() -> None:
        await Context.create_server_context(Root(), bind=("127.0.0.1", port), transports=["udp6"])
        print("ready", flush=True)
        await asyncio.get_running_loop().create_future()

    asyncio.run(main())


class CoapTarget:
    """The target server in its own process on a free UDP port of 127.0.0.1; stopped by its PID."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_udp_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CoapTarget:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "tests.coap_support", str(self.port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"the CoAP target did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # -- control, over raw UDP -----------------------------------------------------------------------
    def control(self, what: str, payload: bytes = b"", code: Code = Code.POST) -> Message:
        with RawCoap(self.port) as c:
            return c.request(code, "_ctl/" + what, payload=payload)

    def log(self) -> list[dict[str, Any]]:
        return list(json.loads(self.control("log", code=Code.GET).payload))

    def clear(self) -> None:
        self.control("clear")

    def observers(self) -> dict[str, int]:
        return dict(json.loads(self.control("observers", code=Code.GET).payload))

    def notify(self, path: str, payload: bytes) -> None:
        self.control("notify/" + path, payload)

    def end(self, path: str) -> None:
        self.control("end/" + path)

    def __enter__(self) -> CoapTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_udp_port() -> int:
    return free_udp_ports(1)[0]


def free_udp_ports(count: int) -> list[int]:
    """``count`` distinct free UDP ports (``tests/servers.free_ports``)."""
    return free_ports(count, socket.SOCK_DGRAM)


@contextlib.contextmanager
def libcoap_server() -> Iterator[int]:
    """libcoap's example server (``coap-server-notls``; ``/`` answers a greeting) on a free UDP port, for
    proxy-mode targets in the DTLS tests."""
    port = free_udp_port()
    proc = subprocess.Popen(
        ["coap-server-notls", "-A", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


# ----------------------------------------------------------------------------------------- raw client


class RawCoap:
    """One UDP socket speaking CoAP by hand: ``send`` any message, ``recv`` the next one, ``request`` a
    CON request and its piggybacked (or separate) response. Works under gevent and without it."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.addr = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self._mid = int.from_bytes(os.urandom(2), "big")
        self._token = int.from_bytes(os.urandom(4), "big")

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def next_token(self) -> bytes:
        self._token = (self._token + 1) & 0xFFFFFFFF
        return self._token.to_bytes(4, "big")

    def build(
        self,
        code: Code,
        path: str,
        payload: bytes = b"",
        mtype: Any = CON,
        token: bytes | None = None,
        **options: Any,
    ) -> Message:
        msg = Message(code=code, payload=payload)
        msg.mtype, msg.mid, msg.token = mtype, self.next_mid(), token or self.next_token()
        path, _, query = path.partition("?")
        msg.opt.uri_path = [p for p in path.split("/") if p]
        if query:
            msg.opt.uri_query = query.split("&")
        for name, value in options.items():
            setattr(msg.opt, name, value)
        return msg

    def send(self, msg: Message) -> None:
        self.sock.sendto(msg.encode(), self.addr)

    def recv(self, timeout: float = 5.0) -> Message:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65536)
        return Message.decode(data)

    def ack(self, msg: Message) -> None:
        """Acknowledge a CON (a separate response or a notification)."""
        if msg.mtype == CON:
            self.send(_empty(ACK, msg.mid))

    def rst(self, msg: Message) -> None:
        self.send(_empty(RST, msg.mid))

    def request(
        self, code: Code, path: str, payload: bytes = b"", timeout: float = 5.0, **options: Any
    ) -> Message:
        """A CON request; returns the response (piggybacked, or separate after an empty ACK), its Block2
        blocks fetched and joined."""
        response = self.exchange(self.build(code, path, payload, **options), timeout)
        while response.opt.block2 is not None and response.opt.block2.more:
            block2 = response.opt.block2
            follow = self.build(code, path, **options)
            follow.opt.block2 = (block2.block_number + 1, False, block2.size_exponent)
            following = self.exchange(follow, timeout)
            response.payload += following.payload
            response.opt.block2 = following.opt.block2
        return response

    def exchange(self, msg: Message, timeout: float = 5.0) -> Message:
        """Sends ``msg`` (CON) and returns its response, acknowledging a separate one."""
        code, path = msg.code, "/".join(msg.opt.uri_path)
        self.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no response to {code} {path}")
            answer = self.recv(left)
            if answer.token != msg.token and answer.code != Code.EMPTY:
                self.ack(answer)
                continue
            if answer.code == Code.EMPTY:
                continue  # the empty ACK of a separate response
            self.ack(answer)
            return answer

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawCoap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _empty(mtype: Any, mid: int) -> Message:
    msg = Message(code=Code.EMPTY)
    msg.mtype, msg.mid = mtype, mid
    return msg


# ----------------------------------------------------------------------------------------- libcoap


def coap_client(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    """``coap-client-notls ARGS`` (libcoap): stdout is the payload, the response code is on stderr for
    errors (``4.01 Unauthorized``...)."""
    return subprocess.run(["coap-client-notls", *args], capture_output=True, timeout=timeout)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
