"""The request head of an ``http`` listener, read strictly (RFC 9112) and fast.

pywsgi parses request headers with ``http.client.parse_headers`` (the ``email`` package's feed parser): a
tenth of the gateway's CPU per publish request in bench/http_publish.py, and lenient where a proxy must not
be. This reader gives pywsgi the few things it uses (``status``, ``get``/``getheader``, ``typeheader``,
``del``, and ``headers`` as raw lines) from one ``readline`` and one regular-expression match per header line,
and :func:`request_line` and :func:`framing` decide the rest of the head: every request of both modes (reverse
proxy and publish) passes them before anything is forwarded or published.

Refused (:class:`HeadError`, the connection is closed after the answer):

- a request line that is not ``method SP request-target SP HTTP/1.x`` (one space each, a token method, a
  target of visible ASCII: raw UTF-8, controls and spaces are refused), HTTP/0.9: 400; another major
  version: 505;
- a header line that is not ``token ":" OWS value OWS``: a space or other non-token byte in the name (also
  before the colon), obs-fold continuation lines, NUL / CR / LF / other controls / DEL in the value: 400;
- more than :data:`MAX_HEADERS` header lines or a head over :data:`MAX_HEAD` bytes: 431;
- no ``Host`` in HTTP/1.1, more than one ``Host``: 400;
- ``Content-Length`` that is not digits, or several differing ones: 400;
- ``Transfer-Encoding`` together with ``Content-Length``, in HTTP/1.0, or whose last coding is not
  ``chunked`` (``xchunked``, ``chunked, identity``), ``chunked`` twice: 400; any other coding (``gzip``): 501.

Bare LF line ends are accepted (RFC 9112 2.2 allows it); a bare CR anywhere is refused.
"""

from __future__ import annotations

import re
from typing import Any

from gevent.pywsgi import _InvalidClientInput

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "BodyTimeout",
    "Framing",
    "HeadError",
    "RequestHeaders",
    "framing",
    "read_headers",
    "request_line",
]

MAX_HEADERS = 100
#: Bytes of header lines (the request line has pywsgi's own cap, 8 KiB: 414 above it).
MAX_HEAD = 65536

_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
# field-name ":" OWS field-value OWS, the value's bytes: HTAB, SP, VCHAR, obs-text (no CTL, no DEL)
# (no backtracking: OWS is stripped afterwards, so a long run of spaces costs linear time); on latin-1 text
_FIELD = re.compile(r"([" + _TCHAR + r"]+):([\t\x20-\x7e\x80-\xff]*)\r?\n")
_FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding"})
_OWN_ENVIRON_KEYS = frozenset({"content-type", "content-length"})
_REQUEST_LINE = re.compile(r"([" + _TCHAR + r"]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r?\n")
_DIGITS = re.compile(r"[0-9]+")


class HeadError(ValueError):
    """A request head refused with ``status`` (the connection is closed after the answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHeaders:
    __slots__ = ("_by_name", "codings", "environ", "headers", "hosts", "lengths", "status")

    def __init__(self) -> None:
        self.status = ""  # pywsgi reads it: non-empty means malformed (read_headers raises instead)
        self.headers: list[str] = []  # "Name: value\r\n", in order (pywsgi builds the environ from these)
        self._by_name: dict[str, str] = {}  # lower-case name -> first value
        self.hosts = 0
        self.lengths: list[str] = []  # every Content-Length value (list elements split)
        self.codings: list[str] = []  # every Transfer-Encoding coding, in order, lower-case
        #: ("HTTP_NAME", value) for the WSGI environ, in order; names holding "_" are left out (as pywsgi
        #: does: X_Forwarded_For must not pass for X-Forwarded-For), Content-Type and -Length have their own
        self.environ: list[tuple[str, str]] = []

    def get(self, name: str, default: Any = None) -> Any:
        return self._by_name.get(name.lower(), default)

    getheader = get

    @property
    def typeheader(self) -> str | None:
        return self._by_name.get("content-type")

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._by_name

    def __delitem__(self, name: str) -> None:
        low = name.lower()
        if self._by_name.pop(low, None) is not None:
            self.headers = [h for h in self.headers if h.split(":", 1)[0].strip().lower() != low]


def request_line(line: str) -> tuple[str, str, str]:
    """``(method, target, version)`` of a request line (latin-1 text, its line end included); the version is
    ``HTTP/1.0`` or ``HTTP/1.1`` (a later 1.x is answered as 1.1). Raises :class:`HeadError`."""
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        words = line.split()
        if len(words) == 2:
            raise HeadError(400, "HTTP/0.9 requests are not supported")
        raise HeadError(400, "malformed request line")
    method, target, major, minor = m.groups()
    if major != "1":
        raise HeadError(505, f"HTTP/{major}.{minor} is not supported: HTTP/1.1 only")
    return method, target, "HTTP/1.0" if minor == "0" else "HTTP/1.1"


def read_headers(rfile: Any) -> RequestHeaders:
    """Reads header lines up to the blank line. Raises :class:`HeadError` on a malformed or oversized head;
    reads at most :data:`MAX_HEAD` bytes (+ one line end) whatever the client sends."""
    out = RequestHeaders()
    by_name = out._by_name
    lines = out.headers
    budget = MAX_HEAD
    match = _FIELD.fullmatch
    readline = rfile.readline
    environ = out.environ
    while True:
        raw = readline(budget + 1)
        if len(raw) <= 2 and (raw == b"\r\n" or raw == b"\n"):
            return out
        if raw[-1:] != b"\n":
            if len(raw) > budget:
                raise HeadError(431, f"request header fields over {MAX_HEAD} bytes")
            raise HeadError(400, "the connection ended inside the request head")
        budget -= len(raw)
        if len(lines) >= MAX_HEADERS:
            raise HeadError(431, f"more than {MAX_HEADERS} request header fields")
        line = raw.decode("latin-1")
        m = match(line)
        if m is None:
            if line[0] in " \t":
                raise HeadError(400, "obsolete line folding is not accepted")
            raise HeadError(400, "malformed header field")
        name, value = m.groups()
        value = value.strip(" \t")
        low = name.lower()
        if low in _FRAMING_FIELDS:
            if low == "host":
                out.hosts += 1
            elif low == "content-length":
                out.lengths.extend(v.strip(" \t") for v in value.split(","))
            else:
                out.codings.extend(v.strip(" \t").lower() for v in value.split(","))
        if low not in by_name:
            by_name[low] = value
        lines.append(line)
        if low not in _OWN_ENVIRON_KEYS and "_" not in name:
            environ.append(("HTTP_" + name.upper().replace("-", "_"), value))


class BodyTimeout(_InvalidClientInput):  # type: ignore[misc]
    """The body deadline passed (an ``_InvalidClientInput``: pywsgi closes the connection after it)."""

    def __init__(self, *args: Any) -> None:
        super().__init__("request body not received within body_timeout")


class Framing:
    """How a request's body is delimited: ``length`` bytes (None: no Content-Length) or ``chunked``."""

    __slots__ = ("chunked", "length")

    def __init__(self, length: int | None, chunked: bool) -> None:
        self.length = length
        self.chunked = chunked


def framing(headers: RequestHeaders, version: str) -> Framing:
    """The body framing of a request whose head was read by :func:`read_headers`; raises :class:`HeadError`
    for every ambiguous or unsupported combination (see the module's docstring)."""
    if headers.hosts > 1:
        raise HeadError(400, "more than one Host header")
    if headers.hosts == 0 and version == "HTTP/1.1":
        raise HeadError(400, "an HTTP/1.1 request needs a Host header")
    codings = headers.codings
    length: int | None = None
    if headers.lengths:
        values = set(headers.lengths)
        if len(values) > 1:
            raise HeadError(400, "conflicting Content-Length values")
        (value,) = values
        if _DIGITS.fullmatch(value) is None:
            raise HeadError(400, f"invalid Content-Length {value[:40]!r}")
        length = int(value)
    if not codings:
        return Framing(length, False)
    if length is not None:
        raise HeadError(400, "Transfer-Encoding and Content-Length together")
    if version != "HTTP/1.1":
        raise HeadError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if codings[-1] != "chunked":
        raise HeadError(400, "the last transfer coding must be chunked")
    for coding in codings[:-1]:
        if coding == "chunked":
            raise HeadError(400, "chunked applied more than once")
        raise HeadError(501, f"transfer coding {coding[:40]!r} is not supported")
    return Framing(None, True)
