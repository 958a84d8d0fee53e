"""Helpers of the http hardening and fuzz tests: a target that records every request it is sent (so a test can
show a smuggled request never reached it), raw-socket exchanges, and reading a gateway log for escapes."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gevent.pywsgi import WSGIServer

from tests.fuzz_live import escaped

BASIC = base64.b64encode(b"dev1:pw1").decode()
AUTH = f"Authorization: Basic {BASIC}\r\n"
#: The path a smuggled request asks for: the recording target must never see it.
SMUGGLED = "SMUGGLED"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class RecordingTarget:
    """A pywsgi target in the test process that records every request it gets and answers 200 with a JSON
    document of it (``method``, ``path``, ``headers``, ``body_length``)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.server = WSGIServer(("127.0.0.1", 0), self._app, log=None, error_log=None)
        self.server.start()
        self.port = int(self.server.address[1])

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = environ["wsgi.input"].read()
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_LENGTH"):
            headers["content-length"] = environ["CONTENT_LENGTH"]
        seen = Seen(environ["REQUEST_METHOD"], environ["PATH_INFO"], headers, body)
        self.seen.append(seen)
        out = json.dumps(
            {"method": seen.method, "path": seen.path, "headers": headers, "body_length": len(body)}
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]

    def smuggled(self) -> list[Seen]:
        return [s for s in self.seen if SMUGGLED in s.path or SMUGGLED.encode() in s.body]

    def stop(self) -> None:
        self.server.stop(timeout=1)


@dataclass
class Exchange:
    data: bytes  # everything the gateway sent
    closed: bool  # the gateway closed (or reset) the connection within the wait
    reset: bool = False

    @property
    def statuses(self) -> list[int]:
        """The status of every response head in ``data`` (best effort: split on status lines)."""
        out = []
        for part in self.data.split(b"HTTP/1.")[1:]:
            fields = part.split(b" ", 2)
            if len(fields) >= 2 and fields[1][:3].isdigit():
                out.append(int(fields[1][:3]))
        return out

    @property
    def status(self) -> int | None:
        return self.statuses[0] if self.statuses else None


def exchange(port: int, data: bytes, wait: float = 5.0, host: str = "127.0.0.1") -> Exchange:
    """Send ``data`` on a new connection, then read until the gateway closes it or ``wait`` seconds pass."""
    sock = socket.create_connection((host, port), timeout=wait)
    got = b""
    reset = False
    closed = False
    try:
        try:
            sock.sendall(data)
        except OSError:
            reset = True  # the gateway refused part-way and closed: read what it answered
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                reset = closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
    finally:
        sock.close()
    return Exchange(got, closed, reset)


class Log:
    """New lines of a gateway log since the watch started, and the escapes among them."""

    def __init__(self, read: Callable[[], str]) -> None:
        self.read = read
        self.start = len(read())

    def new(self) -> str:
        return self.read()[self.start :]

    def escapes(self, settle: float = 0.2) -> list[str]:
        time.sleep(settle)
        return escaped(self.new())


def request(
    method: str = "GET",
    path: str = "/api/dev1/x",
    headers: str = "Host: gw\r\n" + AUTH,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    return f"{method} {path} {version}\r\n{headers}\r\n".encode("latin-1") + body


def smuggled(prefix: str = "/api") -> bytes:
    """A whole second request, hidden where a body should be."""
    return request(path=f"{prefix}/dev1/{SMUGGLED}")
