"""The PROXY protocol (HAProxy's spec, versions 1 and 2), for every TCP listener: a load balancer in TCP
mode puts one header before the client's first byte saying whose connection it is. A listener with
``proxy_protocol = true`` reads it (only from ``trusted_proxies``) and uses the address in it for the
session, the logs and the per-IP limits; ``target_proxy_protocol = 1 | 2`` makes the gateway send one to
its target.

Reading never takes a byte past the header (v1: the line is peeked, then exactly it is read; v2: its
length is in its first 16 bytes), so a TLS handshake or a protocol's first packet that follows is left on
the socket untouched. Every read is bounded (v1: 107 bytes, v2: ``MAX_V2_BODY``) and done against one
deadline; anything else is a :class:`ProxyHeaderError` and the caller closes the connection without a
word (the peer is a load balancer, not a client to explain things to). Protocol-neutral: no listener
imports another protocol's module for it."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .addresses import unmapped

__all__ = [
    "MAX_V1",
    "MAX_V2_BODY",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "TrustedProxies",
    "encode_v1",
    "encode_v2",
    "parse_v1",
    "parse_v2",
    "read_header",
    "real_address",
    "real_addresses",
]

#: The longest v1 header the spec allows, CRLF included.
MAX_V1 = 107
#: The v2 signature (12 bytes), then version/command, family/transport and a 16-bit length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v2 address block (addresses and TLVs) accepted: the spec allows 65535, nobody sends that.
MAX_V2_BODY = 4096

_V1_PREFIX = b"PROXY"
_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_AF_INET_STREAM = 0x11
_AF_INET6_STREAM = 0x21
_AF_UNSPEC = 0x00
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
_V2_HEAD = struct.Struct("!12sBBH")


class ProxyHeaderError(ValueError):
    """A missing, malformed, truncated, oversized or late PROXY header: the connection is to be closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a header said: ``source`` and ``destination`` as ``(host, port)`` (hosts unmapped), or None
    for v2 LOCAL (a health check of the balancer itself), v1 UNKNOWN or a v2 family the gateway does not
    proxy (UNIX sockets, AF_UNSPEC): then the connection's own peer address stands."""

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def _show(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as the gateway shows it: IPv4-mapped IPv6 as the IPv4 address (addresses.py)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else str(address)


def _ip(text: str, family: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"bad address {text[:40]!r}") from None
    if address.version != family:
        raise ProxyHeaderError(f"bad IPv{family} address {text[:40]!r}")
    return _show(address)


def _port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"bad port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"bad port {text!r}")
    return port


def parse_v1(line: bytes) -> ProxyHeader:
    """One v1 header line, ``PROXY TCP4|TCP6|UNKNOWN ...\\r\\n`` (CRLF included)."""
    if len(line) > MAX_V1 or not line.endswith(b"\r\n") or not line.startswith(b"PROXY "):
        raise ProxyHeaderError("not a PROXY v1 line")
    try:
        text = line[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"bad PROXY v1 line {text[:60]!r}")
    family = 4 if parts[1] == "TCP4" else 6
    source = (_ip(parts[2], family), _port(parts[4]))
    destination = (_ip(parts[3], family), _port(parts[5]))
    return ProxyHeader(1, source, destination)


def parse_v2(head: bytes, body: bytes) -> ProxyHeader:
    """A v2 header: its first 16 bytes and the ``length`` bytes after them (addresses, then TLVs, which
    are skipped)."""
    if len(head) != _V2_HEAD.size:
        raise ProxyHeaderError("truncated PROXY v2 header")
    signature, command, family, length = _V2_HEAD.unpack(head)
    if signature != V2_SIGNATURE:
        raise ProxyHeaderError("no PROXY v2 signature")
    if length > MAX_V2_BODY:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (at most {MAX_V2_BODY})")
    if len(body) != length:
        raise ProxyHeaderError("truncated PROXY v2 header")
    if command == _V2_LOCAL:
        return ProxyHeader(2)
    if command != _V2_PROXY:
        raise ProxyHeaderError(f"bad PROXY v2 version/command 0x{command:02x}")
    if family == _AF_INET_STREAM:
        shape = _V2_INET
    elif family == _AF_INET6_STREAM:
        shape = _V2_INET6
    elif family >> 4 <= 3 and family & 0x0F <= 2:  # UNSPEC, AF_UNIX or UDP: no TCP peer, the socket's stands
        return ProxyHeader(2)
    else:
        raise ProxyHeaderError(f"bad PROXY v2 family/transport 0x{family:02x}")
    if length < shape.size:
        raise ProxyHeaderError("PROXY v2 address block too short")
    src, dst, sport, dport = shape.unpack_from(body)
    return ProxyHeader(
        2,
        (_show(ipaddress.ip_address(src)), sport),
        (_show(ipaddress.ip_address(dst)), dport),
    )


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 header for ``source`` -> ``destination`` (``PROXY UNKNOWN`` when either is None, or they are
    of different families: an IPv4 one goes out as IPv4-mapped IPv6)."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _same_family(source[0], destination[0])
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v2 header: PROXY over TCP for ``source`` -> ``destination``; LOCAL when either is None."""
    if source is None or destination is None:
        return _V2_HEAD.pack(V2_SIGNATURE, _V2_LOCAL, _AF_UNSPEC, 0)
    src, dst = _same_family(source[0], destination[0])
    if src.version == 4:
        body = _V2_INET.pack(src.packed, dst.packed, source[1], destination[1])
        family = _AF_INET_STREAM
    else:
        body = _V2_INET6.pack(src.packed, dst.packed, source[1], destination[1])
        family = _AF_INET6_STREAM
    return _V2_HEAD.pack(V2_SIGNATURE, _V2_PROXY, family, len(body)) + body


def _same_family(a: str, b: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    first, second = ipaddress.ip_address(unmapped(a)), ipaddress.ip_address(unmapped(b))
    if first.version != second.version:
        first, second = (
            ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (first, second)
        )
    return first, second


class _Reader:
    """Reads from ``sock`` against one deadline, never past what it is asked for."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + timeout

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProxyHeaderError("no complete PROXY header in time")
        return left

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.sock.settimeout(self._remaining())
        try:
            data = self.sock.recv(size, flags)
        except TimeoutError:
            raise ProxyHeaderError("no complete PROXY header in time") from None
        if not data:
            raise ProxyHeaderError("connection closed before a complete PROXY header")
        return data

    def exactly(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size:  # each pass takes at least one byte
            data = self.recv(size)
            chunks.append(data)
            size -= len(data)
        return b"".join(chunks)

    def line(self, start: bytes, limit: int) -> bytes:
        """``start`` (already read) and the rest of a CRLF-ended line of at most ``limit`` bytes: what is
        waiting is peeked, and only up to the line's end is taken (each pass takes at least one byte)."""
        line = start
        while True:
            peeked = self.recv(limit - len(line), socket.MSG_PEEK)
            seen = line + peeked
            end = seen.find(b"\r\n", max(len(line) - 1, 0))
            if end >= 0:
                return line + self.exactly(end + 2 - len(line))
            line += self.exactly(len(peeked))
            if len(line) >= limit:
                raise ProxyHeaderError(f"PROXY v1 line longer than {limit} bytes")


def read_header(sock: socket.socket, timeout: float) -> ProxyHeader:
    """The PROXY header (v1 or v2) at the start of ``sock``, read within ``timeout`` seconds; the socket is
    left just past it, with its former timeout. :class:`ProxyHeaderError` for anything else."""
    before = sock.gettimeout()
    reader = _Reader(sock, timeout)
    try:
        start = reader.exactly(len(_V1_PREFIX))
        if start == _V1_PREFIX:
            return parse_v1(reader.line(start, MAX_V1))
        if start != V2_SIGNATURE[: len(start)]:
            raise ProxyHeaderError("no PROXY header")
        head = start + reader.exactly(_V2_HEAD.size - len(start))
        length = _V2_HEAD.unpack(head)[3]
        if head[:12] != V2_SIGNATURE:
            raise ProxyHeaderError("no PROXY v2 signature")
        if length > MAX_V2_BODY:
            raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (at most {MAX_V2_BODY})")
        return parse_v2(head, reader.exactly(length) if length else b"")
    except OSError as exc:
        raise ProxyHeaderError(f"reading the PROXY header: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(before)


class TrustedProxies:
    """The ``trusted_proxies`` of a listener (CIDRs, or single addresses), parsed once."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)

    def __contains__(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(unmapped(host).split("%", 1)[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def real_address(
    sock: socket.socket, peer: tuple[str, int], trusted: TrustedProxies, timeout: float
) -> tuple[str, int]:
    """The client's address for a connection from ``peer`` (the socket's own, unmapped) on a listener with
    ``proxy_protocol = true``: the header's source; ``peer`` itself for a LOCAL (health check) or UNKNOWN
    header. :class:`ProxyHeaderError` when ``peer`` is not trusted or the header is bad."""
    return real_addresses(sock, peer, trusted, timeout)[0]


def real_addresses(
    sock: socket.socket, peer: tuple[str, int], trusted: TrustedProxies, timeout: float
) -> tuple[tuple[str, int], tuple[str, int] | None]:
    """``real_address`` and the address the client connected to at the balancer (the header's
    destination; None for a LOCAL or UNKNOWN header): what a listener that sends PROXY on passes on."""
    if peer[0] not in trusted:
        raise ProxyHeaderError(f"{peer[0]} is not in trusted_proxies")
    header = read_header(sock, timeout)
    if header.source is None:
        return (unmapped(peer[0]), peer[1]), None
    return header.source, header.destination
