"""Addresses (``host:port``) and upstream targets (``scheme://host:port/path``): parsing, and the URL
schemes a target may have with their default ports. Which schemes fit which listener, each listener kind
says (``listener_kinds.py``)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_PORTS",
    "PUBLISH_TARGET",
    "SECURE_SCHEMES",
    "Target",
    "format_address",
    "parse_address",
    "parse_target",
]

# Port of each target scheme when the URL gives none.
DEFAULT_PORTS: Mapping[str, int] = {
    "tcp": 1883,
    "tls": 8883,
    "ws": 80,
    "wss": 443,
    "http": 80,
    "https": 443,
    "coap": 5683,
    "coaps": 5684,
}
#: Target schemes that use TLS (DTLS for coaps).
SECURE_SCHEMES: tuple[str, ...] = ("tls", "wss", "https", "coaps")
# Schemes whose URLs may carry a path (a WebSocket endpoint, an HTTP or CoAP prefix).
_PATH_SCHEMES = frozenset({"ws", "wss", "http", "https", "coap", "coaps"})

# The literal target of listeners that turn requests into MQTT publishes via the bridge (publish mode);
# which listener kinds allow it, each kind says (its ``target_schemes``, listener_kinds.py).
PUBLISH_TARGET = "mqtt"

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?"
)


def _check_host(host: str) -> str:
    """``host`` (brackets already removed) or ValueError."""
    if not host:
        raise ValueError("the host is missing")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
        return host
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None
        return host
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid host name or IP address")
    return host


def _check_port(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1..65535")
    return port


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:1884"`` -> ``("127.0.0.1", 1884)``; IPv6 in brackets: ``"[::1]:1884"`` ->
    ``("::1", 1884)``.

    Raises ValueError with a message fit for an operator.
    """
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep:
            raise ValueError(f"{address!r}: missing ']' after the IPv6 address")
        if not rest.startswith(":"):
            raise ValueError(f"{address!r} is not host:port (the port is missing)")
        if ":" not in host:
            raise ValueError(f"{address!r}: brackets are for IPv6 addresses only")
        return _check_host(host), _check_port(rest[1:])
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"{address!r} is not host:port (the port is missing)")
    if ":" in host:
        raise ValueError(f"{address!r}: write IPv6 addresses in brackets, e.g. [::1]:1884")
    return _check_host(host), _check_port(port)


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed upstream URL. The publish-mode target ``"mqtt"`` parses to ``Target("mqtt", "", 0, "")``."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def secure(self) -> bool:
        """True when the upstream connection uses TLS (tls, wss, https, coaps)."""
        return self.scheme in SECURE_SCHEMES

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 in brackets), "" for the publish-mode target."""
        return format_address(self.host, self.port) if self.host else ""

    @property
    def is_publish(self) -> bool:
        """True for the literal ``"mqtt"`` target: requests become MQTT publishes through the router."""
        return self.scheme == PUBLISH_TARGET


def parse_target(target: str, schemes: tuple[str, ...] | None = None) -> Target:
    """Parse an upstream target URL such as ``tcp://127.0.0.1:1883`` or ``wss://broker:8443/mqtt``.

    The port defaults per scheme (:data:`DEFAULT_PORTS`). ``schemes`` limits the accepted schemes (all of
    :data:`DEFAULT_PORTS` plus ``"mqtt"`` when None). Raises ValueError with a message fit for an operator.
    """
    allowed = schemes if schemes is not None else (*DEFAULT_PORTS, PUBLISH_TARGET)
    if target == PUBLISH_TARGET:
        if PUBLISH_TARGET not in allowed:
            raise ValueError(f"'{PUBLISH_TARGET}' (publish mode) is not allowed here")
        return Target(PUBLISH_TARGET, "", 0, "")
    scheme, sep, rest = target.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise ValueError(f"{target!r} is not a URL (expected scheme://host:port)")
    url_schemes = [s for s in allowed if s != PUBLISH_TARGET]
    if scheme not in url_schemes:
        raise ValueError(f"scheme {scheme!r} is not one of {', '.join(url_schemes)}")
    parts = urlsplit(f"{scheme}://{rest}")
    if parts.query or parts.fragment or "?" in rest or "#" in rest:
        raise ValueError(f"{target!r}: a query or fragment is not allowed")
    if "@" in parts.netloc:
        raise ValueError(f"{target!r}: credentials in the URL are not supported")
    netloc = parts.netloc
    if netloc.startswith("["):
        inner, _, tail = netloc[1:].partition("]")
        if tail and not tail.startswith(":"):
            raise ValueError(f"{target!r}: bad host")
        host, port_text = inner, tail[1:] if tail else ""
        if tail == ":":
            raise ValueError(f"{target!r}: the port is empty")
    else:
        if netloc.count(":") > 1:
            raise ValueError(f"{target!r}: write IPv6 addresses in brackets, e.g. tcp://[::1]:1883")
        host, colon, port_text = netloc.partition(":")
        if colon and not port_text:
            raise ValueError(f"{target!r}: the port is empty")
    host = _check_host(host)
    port = _check_port(port_text) if port_text else DEFAULT_PORTS[scheme]
    path = parts.path
    if path and scheme not in _PATH_SCHEMES:
        if path != "/":
            raise ValueError(f"{target!r}: a {scheme} target takes no path")
        path = ""
    return Target(scheme, host, port, path)
