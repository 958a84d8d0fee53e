"""A small HTTP echo target for trying the reverse proxy (``ferryman http-echo``) and for the tests.

Every request is answered 200 with a JSON document of what arrived: ``method``, ``path`` (as sent, still
encoded), ``query``, ``headers`` (lower-case names), ``body`` (UTF-8, undecodable bytes replaced) and
``body_length``. Two paths do more: ``.../status/<code>`` answers with that status, ``.../bytes/<n>`` with
``n`` bytes of ``x`` in chunks (no Content-Length: a streamed response). Keep-alive, HTTP/1.1, gevent pywsgi.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from gevent.pywsgi import WSGIHandler, WSGIServer

__all__ = ["EchoServer", "echo_app", "main"]


def _bytes(n: int) -> Iterator[bytes]:
    while n > 0:
        step = min(n, 65536)
        yield b"x" * step
        n -= step


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path: str = environ.get("ferryman.echo.raw_path") or environ["PATH_INFO"]
    parts = environ["PATH_INFO"].strip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "status" and parts[-1].isdigit():
        code = int(parts[-1])
        start_response(f"{code} Echo", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    if len(parts) >= 2 and parts[-2] == "bytes" and parts[-1].isdigit():
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _bytes(int(parts[-1]))
    body = environ["wsgi.input"].read()
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    doc = {
        "method": environ["REQUEST_METHOD"],
        "path": path,
        "query": environ.get("QUERY_STRING", ""),
        "headers": headers,
        "body": body.decode("utf-8", "replace"),
        "body_length": len(body),
    }
    out = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [out]


class _EchoHandler(WSGIHandler):  # type: ignore[misc]
    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        env["ferryman.echo.raw_path"] = self.path.split("?", 1)[0]
        return env


class EchoServer(WSGIServer):  # type: ignore[misc]
    """``EchoServer(("127.0.0.1", 0)).start()``; ``.address`` is where it listens."""

    handler_class = _EchoHandler

    def __init__(self, address: tuple[str, int], **ssl_args: Any) -> None:
        super().__init__(
            address, echo_app, log=None, error_log=None, environ={"SERVER_NAME": address[0]}, **ssl_args
        )

    def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def main(argv: Sequence[str] | None = None) -> int:
    """``ferryman http-echo [--address HOST:PORT] [--cert FILE --key FILE]``: serve until interrupted."""
    from ferryman.config import parse_address

    parser = argparse.ArgumentParser(prog="ferryman http-echo", description="an HTTP echo target")
    parser.add_argument("--address", default="127.0.0.1:8080", help="host:port (default 127.0.0.1:8080)")
    parser.add_argument("--cert", default="", help="serve https with this certificate (PEM)")
    parser.add_argument("--key", default="", help="its private key (PEM)")
    args = parser.parse_args(argv)
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        parser.error(f"--address: {exc}")
    ssl_args: dict[str, Any] = {"certfile": args.cert, "keyfile": args.key} if args.cert else {}
    server = EchoServer((host, port), **ssl_args)
    scheme = "https" if args.cert else "http"
    print(f"http-echo on {scheme}://{server.address[0]}:{server.address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(timeout=1)
    return 0
