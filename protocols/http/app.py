"""The WSGI application of an ``http`` listener: path -> topic, credentials -> the handler chain's decision,
then either the reverse proxy to the target or (``target = "mqtt"``) an MQTT publish through the bridge.

Status codes (every error has a JSON body ``{"error": "..."}``): 400 bad topic, header, path (not UTF-8 once
percent-decoded) or body framing; 401 no, unreadable or refused credentials (with ``WWW-Authenticate``; one
text for every refusal by the chain, so a client cannot tell an unknown user from a wrong password); 403
topic refused by the grant; 404 path outside ``path_prefix``; 405 not a POST in publish mode; 408 body not
received within ``body_timeout``; 413 body over ``max_packet_size``; 429 / 503 the chain refused for quota or
availability; 502 target (or broker) unreachable, timed out, or refused. The request head itself is
checked before the application runs (``server.py``, ``headers.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from loguru import logger

from ferryman.actors.contracts import Grant, RefusalCode
from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.actors.topics import validate_topic_name

from .auth import CERTIFICATE, INVALID, credentials_from
from .headers import BodyTimeout
from .publish import QOS_HEADER, RETAIN_HEADER, Publisher, intercept, parse_qos, parse_retain
from .upstream import HOP_BY_HOP, Upstream, UpstreamError

__all__ = ["CONNECTION_KEY", "HttpApp", "normalize_prefix"]

#: The environ key under which the server puts the connection handler (its AuthCache, its raw path).
CONNECTION_KEY = "ferryman.connection"

StartResponse = Callable[..., Any]
_JSON = ("Content-Type", "application/json")
_CHALLENGE = [
    ("WWW-Authenticate", 'Basic realm="ferryman", charset="UTF-8"'),
    ("WWW-Authenticate", 'Bearer realm="ferryman"'),
]
_STATUS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
_REFUSAL_STATUS = {
    RefusalCode.SERVER_UNAVAILABLE: 503,
    RefusalCode.SERVER_BUSY: 503,
    RefusalCode.SERVER_SHUTTING_DOWN: 503,
    RefusalCode.QUOTA_EXCEEDED: 429,
}
_NO_FORWARD = HOP_BY_HOP | {"host", "content-length", "expect"}
#: The one answer to credentials the chain refused (which handler said what goes to the debug log only).
REFUSED = "credentials refused"


def normalize_prefix(prefix: str) -> str:
    """``""``, ``"/"`` -> ``""``; ``"api/"`` -> ``"/api"``."""
    prefix = prefix.strip().strip("/")
    return f"/{prefix}" if prefix else ""


def _under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it, on a segment boundary ("/health" covers "/health/x", not
    "/healthz"); a prefix ending in "/" covers what starts with it."""
    if prefix.endswith("/"):
        return path.startswith(prefix) or path == prefix[:-1]
    return path == prefix or path.startswith(prefix + "/")


def _dot_segments(path: str) -> bool:
    return any(seg in (".", "..") for seg in path.split("/"))


class HttpError(Exception):
    """An error answer; ``close``: the connection is closed after it (the request stream is not trusted)."""

    def __init__(
        self, status: int, message: str, headers: Iterable[tuple[str, str]] = (), close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)
        self.close = close


class HttpApp:
    def __init__(
        self,
        settings: Any,
        chain: HandlerChain,
        metrics: Metrics,
        upstream: Upstream | None,
        scheme: str,
        publisher: Publisher | None = None,
    ) -> None:
        """Reverse proxy with an ``upstream``; publish mode (no upstream) with the bridge's ``publisher``."""
        self.name: str = settings.name
        self.chain = chain
        self.metrics = metrics
        self.upstream = upstream
        self.scheme = scheme
        self.prefix = normalize_prefix(settings.path_prefix)
        self.bypass = tuple(settings.bypass)
        self.max_body: int = settings.max_packet_size
        self.timeout: float = settings.connect_timeout
        self.default_qos: int = settings.publish_qos
        no_forward = _NO_FORWARD if settings.forward_authorization else _NO_FORWARD | {"authorization"}
        self.no_forward: frozenset[str] = frozenset(no_forward)
        self.publisher = publisher
        self.stopping = False
        self._requests = _request_counter(metrics)
        self._by_status: dict[int, Any] = {}

    # -- responses -------------------------------------------------------------------------------------
    def count(self, status: int) -> None:
        """One response of ``status`` in ``ferryman_http_requests_total`` (also those the server sends for
        a refused head)."""
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._requests.labels(self.name, str(status))
        child.inc()

    def _send(
        self,
        start_response: StartResponse,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]],
    ) -> list[bytes]:
        self.count(status)
        if self.stopping:
            headers.append(("Connection", "close"))
        start_response(_STATUS.get(status) or str(status), headers)
        return [body]

    def _json(
        self,
        start_response: StartResponse,
        status: int,
        doc: dict[str, Any],
        extra: Iterable[tuple[str, str]] = (),
    ) -> list[bytes]:
        body = json.dumps(doc).encode()
        headers = [_JSON, ("Content-Length", str(len(body))), ("Date", _http_date()), *extra]
        return self._send(start_response, status, body, headers)

    # -- the application -------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._serve(environ, start_response)
        except HttpError as err:
            extra = err.headers
            if err.close or _unread_body(environ, self.max_body):
                _abandon_body(environ)  # the body is not read just to throw it away: close instead
                extra = [*extra, ("Connection", "close")]
            return self._json(start_response, err.status, {"error": err.message}, extra)
        except Exception as exc:  # a bug costs one request, never the connection's greenlet
            logger.opt(exception=exc).error("listener {!r}: request failed", self.name)
            _abandon_body(environ)
            return self._json(start_response, 500, {"error": "internal error"}, [("Connection", "close")])

    def _serve(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:  # PEP 3333: PATH_INFO holds the percent-decoded bytes as latin-1; they must be UTF-8
            path: str = environ["PATH_INFO"].encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise HttpError(400, "bad path: not UTF-8 once percent-decoded") from None
        if not path.startswith("/") or _dot_segments(path):
            raise HttpError(400, "bad path")
        method: str = environ["REQUEST_METHOD"]
        publish = self.upstream is None
        bypass = not publish and any(_under(path, b) for b in self.bypass)
        rest = self._rest(path)
        if rest is None and not bypass:
            raise HttpError(404, "not found")
        if publish and method != "POST":
            raise HttpError(405, "publish mode takes POST only", [("Allow", "POST")])
        creds, query = credentials_from(environ.get("HTTP_AUTHORIZATION"), environ.get("QUERY_STRING", ""))
        if bypass:
            body = self._body(environ)
            return self._forward(environ, start_response, method, rest, query, body)
        assert rest is not None
        conn = environ[CONNECTION_KEY]
        if creds is None:
            if conn.auth.peer.identity is None:
                raise HttpError(401, "credentials required", _CHALLENGE)
            creds = CERTIFICATE
        if creds is INVALID:
            raise HttpError(401, "unreadable credentials", _CHALLENGE)
        session, decision = conn.auth.decide(creds)
        if not isinstance(decision, Grant):
            self.metrics.refusals.labels(self.name, "connect").inc()
            status = _REFUSAL_STATUS.get(decision.code, 401)
            if status == 401:  # one text whatever the reason: no telling unknown users from wrong passwords
                logger.debug("listener {!r}: credentials refused: {}", self.name, decision.reason)
                raise HttpError(401, REFUSED, _CHALLENGE)
            raise HttpError(status, decision.reason or "refused")
        topic = rest[1:] if rest.startswith("/") else rest
        if not topic:
            raise HttpError(400, "no topic: the path after the prefix is the topic")
        problem = validate_topic_name(topic)
        if problem:
            raise HttpError(400, f"bad topic: {problem}")
        qos, retain = self.default_qos, False
        if publish:
            asked_qos = parse_qos(environ.get(QOS_HEADER), self.default_qos)
            if asked_qos is None:
                raise HttpError(400, "X-MQTT-QoS must be 0, 1 or 2")
            asked_retain = parse_retain(environ.get(RETAIN_HEADER))
            if asked_retain is None:
                raise HttpError(400, "X-MQTT-Retain must be 0 or 1 (or true / false)")
            qos, retain = asked_qos, asked_retain
        body = self._body(environ)
        if not decision.auth_publish(topic, body):
            self.metrics.refusals.labels(self.name, "publish").inc()
            raise HttpError(403, f"not allowed: {topic}")
        if self.chain.wants_publish:
            self.chain.on_publish(session, topic, body)
        if publish:
            out = intercept(decision, session, topic, body, qos, retain)  # None: an interceptor dropped it
            return self._publish(start_response, topic, body, qos, retain, out)
        return self._forward(environ, start_response, method, rest, query, body)

    def _rest(self, path: str) -> str | None:
        """The path below the prefix ("" or starting with "/"), None outside it."""
        prefix = self.prefix
        if not prefix:
            return path
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix) :]
        return None

    def _body(self, environ: dict[str, Any]) -> bytes:
        """The whole body, as the head framed it (``server.py`` checked the framing), up to ``max_body``.
        A body that breaks its framing (a bad chunk size, data over a chunk, the end of the stream) is 400,
        one not received within ``body_timeout`` 408: both close the connection."""
        inp = environ["wsgi.input"]
        try:
            return self._read_body(inp)
        except HttpError:
            raise
        except (TimeoutError, BodyTimeout) as exc:
            _broken(inp)
            raise HttpError(408, str(exc) or "request body not received in time", close=True) from None
        except (OSError, ValueError) as exc:
            _broken(inp)
            raise HttpError(400, f"bad request body: {exc}", close=True) from None

    def _read_body(self, inp: Any) -> bytes:
        if getattr(inp, "chunked_input", False):
            parts: list[bytes] = []
            total = 0
            while True:
                chunk = inp.read(min(65536, self.max_body + 1 - total))  # one byte over is enough to know
                if not chunk:
                    return b"".join(parts)
                total += len(chunk)
                if total > self.max_body:
                    raise HttpError(413, f"body over {self.max_body} bytes")
                parts.append(chunk)
        n = getattr(inp, "content_length", None) or 0
        if n > self.max_body:
            raise HttpError(413, f"body over {self.max_body} bytes")
        if not n:
            return b""
        data: bytes = inp.read(n)
        if len(data) < n:
            raise HttpError(400, "the connection ended inside the request body", close=True)
        return data

    # -- publish mode ----------------------------------------------------------------------------------
    def _publish(
        self,
        start_response: StartResponse,
        topic: str,
        body: bytes,
        qos: int,
        retain: bool,
        out: tuple[str, bytes, int, bool] | None,
    ) -> Iterable[bytes]:
        """Publishes ``out`` (the request after the interceptors; None: dropped, answered as delivered) and
        answers with what the request asked for."""
        publisher = self.publisher
        assert publisher is not None  # publish mode: the listener hands it over at construction
        if out is not None:
            ack = publisher.publish(*out)
            if not ack.wait(self.timeout):
                reason = ack.reason or f"not acknowledged within {self.timeout}s"
                raise HttpError(502, f"publish failed: {reason}")
        return self._json(start_response, 202, {"topic": topic, "qos": qos, "retain": retain})

    # -- reverse proxy ---------------------------------------------------------------------------------
    def _forward(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        method: str,
        rest: str | None,
        query: str,
        body: bytes,
    ) -> Iterable[bytes]:
        """``rest``: the decoded path below the prefix, None for a bypass path outside it (sent whole)."""
        upstream = self.upstream
        assert upstream is not None
        raw = environ[CONNECTION_KEY].path.split("?", 1)[0]
        url = upstream.base_path + (raw if rest is None else _raw_rest(raw, self.prefix, rest))
        if not url.startswith("/"):
            url = "/" + url
        if query:
            url += "?" + query
        headers = _request_headers(environ, upstream.host_header, self.scheme, self.no_forward)
        if body or method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))
        try:
            conn, response = upstream.request(method, url, headers, body or None)
        except UpstreamError as exc:
            logger.info("listener {!r}: {} {} -> 502: {}", self.name, method, url, exc)
            raise HttpError(502, str(exc)) from None
        head = method == "HEAD"
        out = _response_headers(response.getheaders(), keep_length=head)
        status = response.status
        small = upstream.read_small(conn, response, reuse=not head)
        if small is not None:
            return self._send(start_response, status, small, out)
        if response.length is not None:
            out.append(("Content-Length", str(response.length)))
        self.count(status)
        if self.stopping:
            out.append(("Connection", "close"))
        start_response(f"{status} {response.reason}", out)
        return upstream.stream(conn, response)


_date = [0, ""]


def _http_date() -> str:
    """The Date header, formatted once a second (pywsgi formats one per response)."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, formatdate(now, usegmt=True)
    return str(_date[1])


def _raw_rest(raw: str, prefix: str, rest: str) -> str:
    """The still-encoded path below the prefix: forwarded as the client wrote it (``%2F`` stays)."""
    if not prefix:
        return raw
    if raw.startswith(prefix) and (len(raw) == len(prefix) or raw[len(prefix)] == "/"):
        return raw[len(prefix) :]
    from urllib.parse import quote

    return quote(rest, safe="/!$&'()*+,;=:@~")


def _request_headers(
    environ: dict[str, Any], host: str, scheme: str, no_forward: frozenset[str] = frozenset(_NO_FORWARD)
) -> list[tuple[str, str]]:
    connection_tokens = {
        t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",") if t.strip()
    }
    headers: list[tuple[str, str]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
            if name in no_forward or name in connection_tokens or name.startswith("x-forwarded-"):
                continue
            headers.append((name.title(), value))
    if "CONTENT_TYPE" in environ:
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    headers.append(("Host", host))
    client = environ.get("REMOTE_ADDR", "")
    prior = environ.get("HTTP_X_FORWARDED_FOR")
    headers.append(("X-Forwarded-For", f"{prior}, {client}" if prior else client))
    headers.append(("X-Forwarded-Proto", scheme))
    if "HTTP_HOST" in environ:
        headers.append(("X-Forwarded-Host", environ["HTTP_HOST"]))
    return headers


def _response_headers(items: list[tuple[str, str]], keep_length: bool = False) -> list[tuple[str, str]]:
    """The target's headers minus hop-by-hop ones; Content-Length is dropped (pywsgi sets it from the body)
    except for HEAD, whose Content-Length describes the body a GET would get."""
    tokens: set[str] = set()
    for name, value in items:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(","))
    return [
        (name, value)
        for name, value in items
        if (low := name.lower()) not in HOP_BY_HOP
        and low not in tokens
        and (keep_length or low != "content-length")
    ]


def _unread_body(environ: dict[str, Any], limit: int) -> bool:
    """An unread body too big (or of unknown size) to read through just to keep the connection."""
    inp = environ.get("wsgi.input")
    if inp is None:
        return False
    if getattr(inp, "chunked_input", False):
        return True
    return (getattr(inp, "content_length", None) or 0) - getattr(inp, "position", 0) > limit


def _broken(inp: Any) -> None:
    """The body's framing is broken or late: never read from it again (pywsgi's discard checks the flag)."""
    if hasattr(inp, "_chunked_input_error"):
        inp._chunked_input_error = True


def _abandon_body(environ: dict[str, Any]) -> None:
    """Keep pywsgi from reading (and discarding) a body nobody wants; the connection is closed after."""
    inp = environ.get("wsgi.input")
    if inp is not None and hasattr(inp, "chunked_input"):
        inp.chunked_input = False
        inp.content_length = inp.position


def _request_counter(metrics: Metrics) -> Any:
    """``ferryman_http_requests_total{listener, status}``: one per Metrics registry, shared by its http
    listeners (it lives on the Metrics object, created by the first)."""
    counter = getattr(metrics, "http_requests", None)
    if counter is None:
        from prometheus_client import Counter

        counter = Counter(
            "ferryman_http_requests",
            "HTTP requests by status",
            ["listener", "status"],
            registry=metrics.registry,
        )
        metrics.http_requests = counter  # type: ignore[attr-defined]
    return counter
