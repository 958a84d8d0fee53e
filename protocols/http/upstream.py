"""The reverse proxy's side towards the target: pooled keep-alive HTTP/1.1 connections (``http.client``
on gevent sockets), https through ``protocols.tls.client``.

A connection goes back to the pool only once its response has been read to the end and neither side said
``Connection: close``. A request that fails on a pooled connection before any response byte arrived (the
target closed it while it sat idle) is sent once more on a fresh connection.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

from ferryman.protocols.tls.client import client_context, dial

__all__ = ["HOP_BY_HOP", "Upstream", "UpstreamError"]

#: Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus those we set ourselves.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

_SMALL = 65536  # responses of known length up to this are read at once and handed over as one piece
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class UpstreamError(Exception):
    """The target could not be reached or did not answer (a 502)."""


class _TargetConnection(http.client.HTTPConnection):
    """``http.client`` over ``protocols.tls.client.dial``: TCP_NODELAY, and TLS with the listener's
    ``target_tls`` (CA, client certificate, server name)."""

    def __init__(
        self, host: str, port: int, timeout: float, tls: ssl.SSLContext | None, server_name: str
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._seconds = timeout
        self._tls = tls
        self._server_name = server_name

    def connect(self) -> None:
        sock = dial(self.host, self.port, self._seconds, self._tls, self._server_name)
        sock.settimeout(self._seconds)
        self.sock = sock


class Upstream:
    """One target (``http://`` or ``https://``), shared by every connection of a listener."""

    def __init__(self, target: Any, target_tls: Any | None, timeout: float, max_idle: int = 64) -> None:
        self.host: str = target.host
        self.port: int = target.port
        self.base_path: str = target.path.rstrip("/")
        self.timeout = timeout
        self.tls = client_context(target_tls) if target.scheme == "https" else None
        self.server_name = (target_tls.server_name if target_tls is not None else "") or ""
        self.host_header = (
            target.address
            if target.port != {"http": 80, "https": 443}[target.scheme]
            else (f"[{target.host}]" if ":" in target.host else target.host)
        )
        self.max_idle = max_idle
        self._idle: list[_TargetConnection] = []

    def _new(self) -> _TargetConnection:
        return _TargetConnection(self.host, self.port, self.timeout, self.tls, self.server_name)

    def request(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes | None
    ) -> tuple[_TargetConnection, http.client.HTTPResponse]:
        """Send one request; the connection (to ``release``) and the response, its head read."""
        for attempt in (0, 1):
            reused = bool(self._idle) and attempt == 0
            conn = self._idle.pop() if reused else self._new()
            try:
                conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body)
                return conn, conn.getresponse()
            except _STALE as exc:
                conn.close()
                if reused:
                    continue  # the target dropped an idle keep-alive connection: once more, fresh
                raise UpstreamError(f"target closed the connection: {exc}") from None
            except TimeoutError:
                conn.close()
                raise UpstreamError(f"target did not answer within {self.timeout}s") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise UpstreamError(f"target unreachable: {_describe(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def release(
        self, conn: _TargetConnection, response: http.client.HTTPResponse, reuse: bool = True
    ) -> None:
        """Back to the pool when reusable, else closed."""
        reusable = reuse and response.isclosed() and not response.will_close and conn.sock is not None
        if reusable and len(self._idle) < self.max_idle:
            self._idle.append(conn)
            return
        conn.close()

    def read_small(
        self, conn: _TargetConnection, response: http.client.HTTPResponse, reuse: bool = True
    ) -> bytes | None:
        """The whole body when its length is known and small (then the connection is released), else None.
        ``reuse=False`` closes the connection instead (after a HEAD: a target that wrongly sends a body
        anyway would leave it in the stream of the next response)."""
        length = response.length
        if length is None or length > _SMALL:
            return None
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise UpstreamError(f"target failed while sending the body: {_describe(exc)}") from None
        self.release(conn, response, reuse)
        return data

    def stream(self, conn: _TargetConnection, response: http.client.HTTPResponse) -> Iterator[bytes]:
        """The body in chunks; an error part-way raises ConnectionResetError (the client connection is then
        closed, so a truncated body never looks complete)."""
        try:
            while True:
                chunk = response.read1(_SMALL)
                if not chunk:
                    break
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ConnectionResetError(104, f"target failed mid-response: {_describe(exc)}") from None
        finally:
            self.release(conn, response)

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the target's host ({exc.strerror})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
