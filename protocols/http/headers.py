"""A faster request-header reader for pywsgi's handler.

pywsgi parses request headers with ``http.client.parse_headers`` (the ``email`` package's feed parser): a
tenth of the gateway's CPU per publish request in bench/http_publish.py. This reader gives pywsgi the few
things it uses (``status``, ``get``/``getheader``, ``typeheader``, ``del``, and ``headers`` as raw lines) from
one ``readline`` per header line.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_HEADERS", "RequestHeaders", "read_headers"]

MAX_HEADERS = 100
_MAX_LINE = 65536


class RequestHeaders:
    __slots__ = ("_by_name", "headers", "status")

    def __init__(self) -> None:
        self.status = ""  # non-empty: the request is malformed (pywsgi answers 400)
        self.headers: list[str] = []  # "Name: value\r\n", in order (pywsgi builds the environ from these)
        self._by_name: dict[str, str] = {}  # lower-case name -> first value

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


def read_headers(rfile: Any) -> RequestHeaders:
    """Reads header lines up to the blank line; problems go to ``status`` (never raises on bad input)."""
    out = RequestHeaders()
    by_name = out._by_name
    lines = out.headers
    lengths: set[str] = set()
    while True:
        raw = rfile.readline(_MAX_LINE + 1)
        if len(raw) > _MAX_LINE:
            out.status = "Line too long"
            return out
        if raw in (b"\r\n", b"\n", b""):
            break
        if len(lines) >= MAX_HEADERS:
            out.status = "Too many headers"
            return out
        line = raw.decode("latin-1")
        if line[0] in " \t":  # obsolete line folding: continues the previous header
            if not lines:
                out.status = "Invalid header continuation"
                return out
            lines.append(line)
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            out.status = "Invalid header line"
            return out
        low = name.lower()
        value = value.strip()
        if low == "content-length":
            lengths.add(value)
        by_name.setdefault(low, value)
        lines.append(f"{name}: {value}\r\n")
    if len(lengths) > 1:
        out.status = "Conflicting Content-Length headers"
    return out
