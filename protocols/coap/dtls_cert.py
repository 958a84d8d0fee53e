"""DTLS (``coaps``) with X.509 certificates for the coap listener: a DTLS terminator on OpenSSL (pyOpenSSL)
in front of the listener's plain aiocoap endpoint.

aiocoap has no DTLS server transport with certificates (its ``tinydtls_server`` does pre-shared keys only,
see dtls.py), so a listener with ``[listener.tls]`` terminates DTLS itself, as the TCP listeners terminate
TLS:

- The terminator binds the listener's public UDP address (an asyncio datagram endpoint on the shared
  loop). Per peer (source address and port) it keeps one server-mode ``OpenSSL.SSL.Connection`` on memory
  BIOs: DTLS 1.2 with the ``[listener.tls]`` certificate and key; with ``client_ca_file`` a client
  certificate is required and verified against it (expiry included); ``verify`` runs the TLS listeners'
  revocation checks (``protocols/tls/revocation.py``) on it after the handshake, in the gevent hub.
- **Cookie exchange first** (RFC 6347 §4.2.1, HelloVerifyRequest, through ``DTLSv1_listen``): a ClientHello
  without a valid cookie is answered statelessly (the Connection is thrown away), so spoofed or garbage
  datagrams never create per-peer state and the answer is no larger than the request (no amplification).
  The cookie is an HMAC of the peer's address under a per-process secret.
- Decrypted datagrams are handed to the listener's plain aiocoap endpoint (udp6, bound to an internal
  127.0.0.1 port that serves nothing else: datagrams that really arrive there are dropped) as if they
  had come from the peer's own address; aiocoap's answers to that address are encrypted to the peer
  (:meth:`DtlsTerminator.attach`). So the Session's ``remote_addr`` is the peer's, and
  ``auth._dtls_identity`` finds the peer's verified certificate identity (subject CN, else the first SAN,
  as for TLS listeners) through :meth:`DtlsTerminator.identity_of`.
- **Bounded state**: at most :data:`MAX_PEERS` peers (the least recently heard from goes first), a peer
  idle for :data:`IDLE_TIMEOUT` seconds is dropped, a handshake must finish within
  :data:`HANDSHAKE_TIMEOUT`; a failed handshake, a close_notify or a fatal alert drops the peer at once.
  Retransmission of handshake flights follows ``DTLSv1_get_timeout`` / ``DTLSv1_handle_timeout``.

OpenSSL writes each record into the memory BIO; :func:`split_records` recovers the record boundaries so
that records are packed into datagrams of at most :data:`MTU` bytes (the handshake is fragmented to fit).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from OpenSSL import SSL, crypto

from ferryman.protocols.addresses import plain_address

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_PEERS",
    "MTU",
    "DtlsTerminator",
    "identity_of_certificate",
    "server_context",
    "split_records",
]

#: Peers (source address and port) with DTLS state; the least recently heard from is dropped first.
MAX_PEERS = 4096
#: Seconds without a datagram from an established peer before its state is dropped.
IDLE_TIMEOUT = 300.0
#: Seconds a handshake may take from the verified ClientHello to its end.
HANDSHAKE_TIMEOUT = 30.0
#: Largest datagram sent (DTLS records are packed into datagrams up to this size).
MTU = 1280
#: Largest datagram read; larger ones are truncated by the OS, not DTLS: dropped by OpenSSL.
_MAX_DATAGRAM = 65535
_HANDSHAKE = 22  # DTLS content type of a ClientHello record
_RECORD_HEADER = 13
_DTLS1_2_VERSION = 0xFEFD  # OpenSSL's DTLS1_2_VERSION (pyOpenSSL names the TLS versions only)

PeerAddress = tuple[Any, ...]
#: ``(plaintext, peer sockaddr)`` -> None: hands a decrypted datagram to the plain CoAP endpoint.
Deliver = Callable[[bytes, PeerAddress], None]
#: ``(fn, *args)`` awaited in the gevent hub (``AsyncioHost.in_hub``).
InHub = Callable[..., Awaitable[Any]]


def server_context(tls: Any) -> SSL.Context:
    """DTLS 1.2 with the listener's certificate; with ``client_ca_file`` clients must present a certificate
    issued by that CA. Cookie callbacks are set by :class:`DtlsTerminator`."""
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD)
    ctx.set_min_proto_version(_DTLS1_2_VERSION)
    ctx.use_certificate_chain_file(tls.cert_file)
    ctx.use_privatekey_file(tls.key_file)
    ctx.check_privatekey()
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
    if tls.client_ca_file:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _note_verify_error)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def _note_verify_error(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verdict, unchanged; the first reason for a refusal is kept for the log."""
    state = conn.get_app_data()
    if not ok and isinstance(state, _Hello) and not state.verify_error:
        state.verify_error = _verify_error_string(errno)
    return bool(ok)


def _verify_error_string(errno: int) -> str:
    try:  # pyOpenSSL's binding of X509_verify_cert_error_string (not public API: fall back to the number)
        from OpenSSL._util import ffi, lib

        return str(ffi.string(lib.X509_verify_cert_error_string(errno)).decode())
    except Exception:
        return f"certificate verify error {errno}"


@dataclass(eq=False)
class _Hello:
    """A Connection's app data: the peer's key (for the cookie) and why its certificate was refused."""

    key: tuple[str, int]
    verify_error: str = ""


def identity_of_certificate(cert: crypto.X509) -> tuple[str | None, tuple[str, ...]]:
    """The identity (subject CN, else the first SAN; as ``tls.server.peer_certificate``) and the SANs."""
    from cryptography import x509

    c = cert.to_cryptography()
    sans: tuple[str, ...] = ()
    try:
        ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(str(getattr(name, "value", name)) for name in ext)
    except x509.ExtensionNotFound:
        pass
    for attr in c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = attr.value
        return (value.decode() if isinstance(value, bytes) else str(value)), sans
    return (sans[0] if sans else None), sans


def split_records(blob: bytes) -> list[bytes]:
    """The DTLS records in ``blob`` (what OpenSSL wrote into a memory BIO), each whole."""
    records: list[bytes] = []
    at = 0
    while at + _RECORD_HEADER <= len(blob):
        end = at + _RECORD_HEADER + int.from_bytes(blob[at + 11 : at + 13], "big")
        records.append(blob[at:end])
        at = end
    if at < len(blob):
        records.append(blob[at:])  # cannot happen; never drop bytes silently
    return records


def _datagrams(blob: bytes, mtu: int) -> list[bytes]:
    """``blob``'s records packed into datagrams of at most ``mtu`` bytes (a larger record goes alone)."""
    out: list[bytes] = []
    current = b""
    for record in split_records(blob):
        if current and len(current) + len(record) > mtu:
            out.append(current)
            current = b""
        current += record
    if current:
        out.append(current)
    return out


def _is_client_hello(data: bytes) -> bool:
    """An epoch-0 handshake record holding a ClientHello (handshake type 1)."""
    return len(data) > _RECORD_HEADER and data[0] == _HANDSHAKE and data[3:5] == b"\0\0" and data[13] == 1


@dataclass(eq=False)
class _Peer:
    conn: SSL.Connection
    sockaddr: PeerAddress
    started: float
    last: float
    established: bool = False
    #: Set once the handshake and the revocation checks passed: datagrams are delivered.
    ready: bool = False
    identity: str | None = None
    der: bytes | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    #: Plaintext that arrived while the revocation check ran.
    held: list[bytes] = field(default_factory=list, repr=False)


class DtlsTerminator(asyncio.DatagramProtocol):
    """DTLS termination of one coap listener (asyncio thread only; see the module docstring).

    ``deliver(plaintext, sockaddr)`` hands a decrypted datagram to the plain endpoint; ``revocation``
    (a ``RevocationChecker`` or None) is run as ``await in_hub(revocation.check, der)``; ``log(level,
    message, *args)`` logs (``CoapContext.log``)."""

    def __init__(
        self,
        tls: Any,
        deliver: Deliver,
        *,
        revocation: Any = None,
        in_hub: InHub | None = None,
        log: Callable[..., None] | None = None,
        name: str = "coaps",
        max_peers: int = MAX_PEERS,
        idle_timeout: float = IDLE_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        mtu: int = MTU,
    ) -> None:
        self.context = server_context(tls)
        self._secret = os.urandom(32)
        self.context.set_cookie_generate_callback(self._cookie)
        self.context.set_cookie_verify_callback(self._cookie_ok)
        self.deliver = deliver
        self.name = name
        self.address: tuple[str, int] = ("?", 0)  # the bound public address (set by the listener)
        self.revocation = revocation
        self.in_hub = in_hub
        self.log = log or (lambda *args: None)
        self.max_peers = max_peers
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.mtu = mtu
        self.peers: OrderedDict[tuple[str, int], _Peer] = OrderedDict()
        self.transport: asyncio.DatagramTransport | None = None
        #: Counters (diagnostics, tests): cookies sent, handshakes done / refused, datagrams dropped.
        self.cookies = 0
        self.handshakes = 0
        self.refused = 0
        self.dropped = 0
        self.closed = False

    # -- the public socket -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors of an unconnected socket: the peer's state ages out

    def datagram_received(self, data: bytes, addr: PeerAddress) -> None:
        if self.closed:
            return
        key = plain_address(addr)
        peer = self.peers.get(key)
        try:
            if peer is None:
                self._hello(data, addr, key)
            else:
                self._record(peer, key, data)
        except Exception as exc:  # a bug must cost this datagram, never the listener
            self.dropped += 1
            self.log("ERROR", "listener {!r}: DTLS datagram from {} failed: {!r}", self.name, key, exc)
            if peer is not None:
                self._drop(key)

    def _hello(self, data: bytes, addr: PeerAddress, key: tuple[str, int]) -> None:
        """A datagram from an address without state: only a ClientHello with a valid cookie makes some."""
        if not _is_client_hello(data):
            self.dropped += 1
            return
        conn = SSL.Connection(self.context, None)
        conn.set_accept_state()
        conn.set_ciphertext_mtu(self.mtu)
        conn.set_app_data(_Hello(key))
        conn.bio_write(data)
        try:
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            # No valid cookie: the HelloVerifyRequest (if any) goes back, the Connection is forgotten.
            out = self._pending(conn)
            if out:
                self.cookies += 1
                self._send(out, addr)
            else:
                self.dropped += 1
            return
        except SSL.Error:
            self.dropped += 1
            return
        self._drop(key)  # a restarted client's old association, if any
        now = time.monotonic()
        while len(self.peers) >= self.max_peers:
            oldest = next(iter(self.peers))
            self._drop(oldest)
        peer = _Peer(conn, addr, now, now)
        self.peers[key] = peer
        self._advance(peer, key)

    def _record(self, peer: _Peer, key: tuple[str, int], data: bytes) -> None:
        peer.last = time.monotonic()
        self.peers.move_to_end(key)
        if peer.established and _is_client_hello(data):
            # An epoch-0 ClientHello on an established association: the client restarted. It goes through
            # the cookie exchange; only a valid cookie replaces the old association (RFC 6347 §4.2.8), so
            # a spoofed hello cannot end it.
            self._hello(data, peer.sockaddr, key)
            return
        peer.conn.bio_write(data)
        self._advance(peer, key)

    def _advance(self, peer: _Peer, key: tuple[str, int]) -> None:
        """Runs the handshake or reads application data, then flushes what OpenSSL wants sent."""
        conn = peer.conn
        if not peer.established:
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                self._flush(peer)
                self._arm(peer, key)
                return
            except SSL.Error as exc:
                self._flush(peer)  # the alert, if any
                self.refused += 1
                state = conn.get_app_data()
                reason = state.verify_error if isinstance(state, _Hello) and state.verify_error else ""
                self.log(
                    "INFO",
                    "listener {!r}: DTLS handshake with {}:{} refused: {}",
                    self.name,
                    *key,
                    reason or _reason(exc),
                )
                self._drop(key)
                return
            self._flush(peer)
            self._established(peer, key)
        while True:
            try:
                plain = conn.recv(_MAX_DATAGRAM)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self._flush(peer)
                self._drop(key)
                return
            except SSL.Error:
                self._flush(peer)
                self._drop(key)
                return
            if not plain:
                continue
            if peer.ready:
                self.deliver(plain, peer.sockaddr)
            elif len(peer.held) < 16:
                peer.held.append(plain)
        self._flush(peer)

    def _established(self, peer: _Peer, key: tuple[str, int]) -> None:
        peer.established = True
        self._disarm(peer)
        cert = peer.conn.get_peer_certificate()
        if cert is not None:
            peer.identity, _sans = identity_of_certificate(cert)
            peer.der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        self.handshakes += 1
        if self.revocation is None or self.in_hub is None:
            peer.ready = True
            return
        if peer.der is None:
            self.refused += 1
            self._drop(key)  # cannot happen with a required certificate; refuse rather than assume
            return
        asyncio.get_running_loop().create_task(self._check(peer, key))

    async def _check(self, peer: _Peer, key: tuple[str, int]) -> None:
        assert self.in_hub is not None
        try:
            await self.in_hub(self.revocation.check, peer.der)
        except Exception as exc:
            if self.peers.get(key) is peer:
                self.refused += 1
                self.log(
                    "INFO", "listener {!r}: client certificate of {}:{} refused: {}", self.name, *key, exc
                )
                self._alert(peer)
                self._drop(key)
            return
        if self.peers.get(key) is not peer:
            return
        peer.ready = True
        held, peer.held = peer.held, []
        for plain in held:
            self.deliver(plain, peer.sockaddr)

    # -- output ----------------------------------------------------------------------------------------

    def send_to(self, plain: bytes, sockaddr: PeerAddress) -> bool:
        """Encrypts ``plain`` to the peer at ``sockaddr`` (aiocoap's answers); False if it has no session."""
        key = plain_address(sockaddr)
        peer = self.peers.get(key)
        if peer is None or not peer.ready:
            return False
        try:
            peer.conn.send(plain)
        except SSL.Error:
            self._drop(key)
            return False
        self._flush(peer)
        return True

    def _pending(self, conn: SSL.Connection) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = conn.bio_read(_MAX_DATAGRAM)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _flush(self, peer: _Peer) -> None:
        out = self._pending(peer.conn)
        if out:
            self._send(out, peer.sockaddr)

    def _send(self, blob: bytes, addr: PeerAddress) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for datagram in _datagrams(blob, self.mtu):
            self.transport.sendto(datagram, addr)

    def _alert(self, peer: _Peer) -> None:
        with contextlib.suppress(SSL.Error):
            peer.conn.shutdown()
        self._flush(peer)

    # -- timers and state ------------------------------------------------------------------------------

    def _arm(self, peer: _Peer, key: tuple[str, int]) -> None:
        """Schedules the handshake's retransmission (``DTLSv1_get_timeout``)."""
        self._disarm(peer)
        wait = peer.conn.DTLSv1_get_timeout()
        if wait is None:
            return
        peer.timer = asyncio.get_running_loop().call_later(max(wait, 0.01), self._retransmit, peer, key)

    def _disarm(self, peer: _Peer) -> None:
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None

    def _retransmit(self, peer: _Peer, key: tuple[str, int]) -> None:
        peer.timer = None
        if self.peers.get(key) is not peer or peer.established:
            return
        if time.monotonic() - peer.started > self.handshake_timeout:
            self._drop(key)
            return
        try:
            peer.conn.DTLSv1_handle_timeout()
        except SSL.Error:
            self._drop(key)
            return
        self._flush(peer)
        self._arm(peer, key)

    def identity_of(self, sockaddr: PeerAddress) -> str | None:
        """The verified certificate identity of the peer at ``sockaddr`` (None: none, or no session)."""
        peer = self.peers.get(plain_address(sockaddr))
        return peer.identity if peer is not None and peer.ready else None

    def sweep(self) -> int:
        """Drops idle peers and handshakes past their time; how many."""
        now = time.monotonic()
        stale = [
            key
            for key, peer in self.peers.items()
            if (peer.established and now - peer.last > self.idle_timeout)
            or (not peer.established and now - peer.started > self.handshake_timeout)
        ]
        for key in stale:
            self._drop(key)
        return len(stale)

    def _drop(self, key: tuple[str, int]) -> None:
        peer = self.peers.pop(key, None)
        if peer is not None:
            self._disarm(peer)
            peer.held = []

    def close(self) -> None:
        """Sends close_notify to every peer and forgets them; closes the socket."""
        self.closed = True
        for key in list(self.peers):
            peer = self.peers[key]
            if peer.established:
                self._alert(peer)
            self._drop(key)
        if self.transport is not None:
            self.transport.close()

    # -- cookies (RFC 6347 §4.2.1) ---------------------------------------------------------------------

    def _cookie(self, conn: SSL.Connection) -> bytes:
        host, port = conn.get_app_data().key
        return hmac.new(self._secret, f"{host}|{port}".encode(), hashlib.sha256).digest()[:16]

    def _cookie_ok(self, conn: SSL.Connection, cookie: bytes) -> bool:
        return hmac.compare_digest(cookie, self._cookie(conn))


def _reason(exc: SSL.Error) -> str:
    """OpenSSL's reasons of ``exc`` ("certificate verify failed", "peer did not return a certificate")."""
    parts: list[str] = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else ():
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return ", ".join(parts) or repr(exc)
