"""Socket addresses as the gateway shows them: an IPv4 peer reached through an IPv6 (dual-stack) socket is
``1.2.3.4``, never ``::ffff:1.2.3.4``, in sessions, logs and per-peer state; and the other way round for
the places that hand an IPv4 address to an IPv6 socket. One place for both, for every protocol."""

from __future__ import annotations

from typing import Any

__all__ = ["plain_address", "unmapped", "v4_mapped"]

_PREFIX = "::ffff:"


def unmapped(host: str) -> str:
    """``::ffff:1.2.3.4`` -> ``1.2.3.4``; any other host unchanged."""
    return host[len(_PREFIX) :] if host.startswith(_PREFIX) and "." in host else host


def plain_address(sockaddr: Any) -> tuple[str, int]:
    """``(host, port)`` of a socket address tuple (IPv4, or IPv6 with flow info and scope), unmapped."""
    return unmapped(str(sockaddr[0])), int(sockaddr[1])


def v4_mapped(host: str) -> str:
    """An IPv4 host as an IPv6 socket takes it (``1.2.3.4`` -> ``::ffff:1.2.3.4``); IPv6 hosts unchanged."""
    return host if ":" in host else _PREFIX + host
