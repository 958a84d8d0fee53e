"""DTLS (``coaps``) for the coap listener: pre-shared keys through aiocoap's ``tinydtls_server``; the checks
of certificate DTLS (dtls_cert.py).

aiocoap's only DTLS *server* transport is ``tinydtls_server``, built on the ``DTLSSocket`` package (a
Cython wrapper of Eclipse tinydtls). It does pre-shared keys only:

- ``[listener.psk]`` (``identity = "key"``) makes a coap listener serve ``coaps``: the listener creates the
  aiocoap context with ``transports=["tinydtls_server"]`` and loads one server-credentials entry per
  identity (:func:`psk_credentials`). The entry is *named* after the identity: tinydtls_server reports the
  name of the entry whose key the handshake used as the remote's ``authenticated_claims``, so the claim is
  the identity (read by ``auth._dtls_identity``, the Session's ``identity``).
- Certificates (``[listener.tls]``): tinydtls has none, so they are served by a DTLS terminator on
  OpenSSL (pyOpenSSL) in front of the plain aiocoap endpoint (dtls_cert.py). :func:`dtls_problems` says
  why a listener cannot have them (pyOpenSSL missing, or ``[listener.psk]`` beside: one backend per
  listener; docs/coap.md, "DTLS").

What tinydtls_server needs that the udp6 transport does not (:func:`psk_problems`, :func:`dtls_bind`,
:func:`harden`): a single bound address (it is built on aiocoap's "simple socket server", which refuses
the any-address), a port given one lower than wanted (aiocoap adds ``COAPS_PORT - COAP_PORT`` to the
bind port of a DTLS server), identities of at most 32 bytes and keys of at most 16 (tinydtls's
``DTLS_PSK_MAX_CLIENT_IDENTITY_LEN`` and ``DTLS_PSK_MAX_KEY_LEN``; DTLSSocket copies a longer key into
tinydtls's 16-byte buffer unchecked), a bound on its per-peer DTLS state (it never purges it) and the
peer's socket address on the remote (``remote_of`` looks for ``sockaddr``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_IDENTITY_BYTES",
    "MAX_KEY_BYTES",
    "MAX_PEERS",
    "cert_backend",
    "dtls_backend",
    "dtls_bind",
    "dtls_problems",
    "harden",
    "psk_credentials",
    "psk_problems",
]

#: tinydtls's DTLS_PSK_MAX_CLIENT_IDENTITY_LEN and DTLS_PSK_MAX_KEY_LEN (AES-128: 16) as DTLSSocket 0.2.3
#: builds it.
MAX_IDENTITY_BYTES = 32
MAX_KEY_BYTES = 16
#: DTLS peers (source address and port) whose state is kept; the least recently heard from goes first.
MAX_PEERS = 4096

_COAP_PORT, _COAPS_PORT = 5683, 5684
_ANY_ADDRESSES = ("", "0.0.0.0", "::")


def dtls_backend() -> str | None:
    """The name of the importable DTLS server backend, or None."""
    try:
        if importlib.util.find_spec("DTLSSocket") is not None:
            return "tinydtls (DTLSSocket)"
    except ImportError:
        pass
    return None


def cert_backend() -> str | None:
    """The name of the importable DTLS backend for certificates (pyOpenSSL, dtls_cert.py), or None."""
    try:
        if importlib.util.find_spec("OpenSSL") is not None:
            return "OpenSSL (pyOpenSSL)"
    except ImportError:
        pass
    return None


def dtls_problems(tls: Any, psk: Mapping[str, str] | None = None) -> list[str]:
    """Why ``[listener.tls]`` (certificates: DTLS through dtls_cert.py) cannot be served on a coap listener
    (empty: it can)."""
    problems: list[str] = []
    if psk:
        problems.append(
            "DTLS (coaps) with both [listener.tls] and [listener.psk] is not available: certificates are "
            "served by OpenSSL, pre-shared keys by tinydtls, each on its own socket; give each its own "
            "coap listener (another port)"
        )
    if cert_backend() is None:
        problems.append(
            "DTLS (coaps) with certificates is not available: it needs the pyOpenSSL package, which is not "
            "installed; use [listener.psk] for coaps with pre-shared keys, or remove [listener.tls] to "
            "serve plain coap"
        )
    return problems


def psk_problems(settings: Any) -> list[str]:
    """Why ``[listener.psk]`` cannot be served as given (empty: it can)."""
    if not settings.psk:
        return []
    problems: list[str] = []
    if dtls_backend() is None:
        problems.append(
            "DTLS (coaps) is not available: aiocoap's DTLS server needs the DTLSSocket package (tinydtls), "
            "which is not installed (scripts/setup.sh installs it); remove [listener.psk] to serve plain coap"
        )
    if settings.host in _ANY_ADDRESSES:
        problems.append(
            f"DTLS (coaps) cannot listen on the any-address {settings.host or '(empty)'!r}: aiocoap's DTLS "
            "server binds one address (it could not tell which address a datagram came to); give the "
            "listener's own address, e.g. 127.0.0.1 or 192.0.2.10"
        )
    for identity, key in settings.psk.items():
        if len(identity.encode()) > MAX_IDENTITY_BYTES:
            problems.append(
                f"[listener.psk] identity {identity!r}: at most {MAX_IDENTITY_BYTES} bytes (UTF-8)"
            )
        if len(key.encode()) > MAX_KEY_BYTES:
            problems.append(f"[listener.psk] key of {identity!r}: at most {MAX_KEY_BYTES} bytes (UTF-8)")
    return problems


def psk_credentials(psk: Mapping[str, str]) -> dict[str, Any]:
    """aiocoap server credentials (``CredentialsMap.load_from_dict``): one ``dtls`` entry per identity,
    named after it (the name is what the remote's ``authenticated_claims`` will hold). Hex, so that any
    UTF-8 works (aiocoap's ``ascii`` form takes ASCII only; plain strings are refused: it wants bytes)."""
    return {
        identity: {
            "dtls": {
                "psk": {"hex": key.encode().hex()},
                "client-identity": {"hex": identity.encode().hex()},
            }
        }
        for identity, key in psk.items()
    }


def dtls_bind(host: str, port: int) -> tuple[str, int]:
    """The ``bind`` to hand aiocoap for a DTLS server on ``(host, port)``: aiocoap's simple socket server
    binds ``port + (COAPS_PORT - COAP_PORT)`` (port 0, any free port, is asked for as -1)."""
    return host, port - (_COAPS_PORT - _COAP_PORT)


def harden(context: Any, ctx: Any = None) -> int:
    """Adjusts the tinydtls_server transports of ``context`` (asyncio thread, right after it was created);
    how many it found.

    - Its remotes get ``sockaddr`` (the peer's address and port), which ``auth.remote_of`` reads: without
      it every DTLS peer would be ``("?", 0)`` on its Session.
    - Its per-peer state (a tinydtls context and a retransmission task per source address and port) is
      bounded to :data:`MAX_PEERS`: aiocoap 0.4.17 defines the purge but never calls it, so datagrams
      from many source ports would grow it without end.
    - With ``ctx`` (the listener's CoapContext), every decrypted datagram passes ``codec.screen`` first, as
      plain coap ones do (listener._guard_decoding): format errors and bad critical options are refused.
    """
    from aiocoap.transports.tinydtls_server import _AddressDTLS, _DatagramServerSocketSimpleDTLS

    class _Address(_AddressDTLS):  # type: ignore[misc]
        @property
        def sockaddr(self) -> Any:
            return self._underlying_address.address

    found = 0
    for interface in getattr(context, "request_interfaces", ()):
        message_interface = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        pool = getattr(message_interface, "_pool", None)
        if not isinstance(pool, _DatagramServerSocketSimpleDTLS):
            continue
        found += 1
        pool._Address = _Address  # instance attribute: datagram_received builds its remotes with it
        pool.max_sockets = MAX_PEERS
        received = pool.datagram_received

        def datagram_received(data: bytes, sockaddr: Any, pool: Any = pool, received: Any = received) -> None:
            if sockaddr not in pool._connections:
                pool._maybe_purge_sockets()  # the oldest peer's state goes (an error to its exchanges)
            received(data, sockaddr)

        pool.datagram_received = datagram_received
        plain = getattr(pool, "_message_interface", None)
        if ctx is not None and plain is not None and hasattr(plain, "_received_plaintext"):
            _screen_plaintext(plain, ctx)
    return found


def _screen_plaintext(interface: Any, ctx: Any) -> None:
    from .codec import screen

    received = interface._received_plaintext

    def screened(address: Any, data: bytes) -> None:
        ok, answer = screen(data, ctx.next_mid)
        if not ok:
            ctx.rejected += 1
            if answer is not None:
                address.send(answer)
            return
        received(address, data)

    interface._received_plaintext = screened
