"""TLS session tickets of a listener: their keys, and the rotation of those keys.

A session ticket is the server's encrypted copy of a session that the client keeps and presents on its next
connection to resume it (an abbreviated handshake: no certificate, no signature). OpenSSL encrypts and
authenticates tickets with keys held in the ``SSL_CTX``; it makes random ones per context and never changes
them. Python's ``ssl`` has no call to set them, so this module sets them through OpenSSL's own
``SSL_CTX_ctrl(SSL_CTRL_SET_TLSEXT_TICKET_KEYS)`` (ctypes, on the ``SSL_CTX`` of a CPython ``SSLContext``).

The keys of one rotation period are derived (HKDF-SHA256) from the process's ticket secret, the listener's
TLS settings with its files' contents (``scope_of``) and the period's number (wall-clock time //
``ticket_rotation``): every process that shares the secret (the workers of one supervisor, replicas given
one) issues and accepts the same tickets, and switches keys at the same instant; listeners with different
TLS settings never accept each other's tickets. When the keys cannot be set (not CPython, an ``ssl``
module without the symbol), the listener falls back to a fresh ``SSLContext`` per period (its random
keys), which rotates as well but is private to the process.

At a rotation the previous period's tickets stop working: a client that presents one does a full handshake
and gets a new ticket. One ticket per handshake (``TICKETS_PER_HANDSHAKE``) instead of OpenSSL's two.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import ssl
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# The environment variable (hex) through which processes share one ticket secret: a supervisor's workers,
# replicas an operator gives the same one.
from ferryman.config.env import TICKET_SECRET_ENV

__all__ = [
    "DEFAULT_TICKET_ROTATION",
    "TICKETS_PER_HANDSHAKE",
    "TICKET_KEYS_SIZE",
    "TICKET_SECRET_ENV",
    "TicketKeys",
    "adopt_ticket_secret",
    "get_ticket_keys",
    "scope_of",
    "set_ticket_keys",
    "set_ticket_secret",
    "ticket_keys_settable",
]

DEFAULT_TICKET_ROTATION = 3600.0  # seconds; [listener.tls] ticket_rotation
#: TLS 1.3 tickets sent after a handshake (OpenSSL's default is 2: the second is rarely used by a device,
#: which resumes one connection at a time, and costs a serialization, an encryption and a record).
TICKETS_PER_HANDSHAKE = 1
#: OpenSSL (1.1.0 and later): 16 bytes key name, 32 bytes HMAC-SHA256 key, 32 bytes AES-256 key.
TICKET_KEYS_SIZE = 80
_SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


_secret: bytes = os.urandom(32)


def adopt_ticket_secret(environ: MutableMapping[str, str], remove: bool = False) -> bool:
    """Take the ticket secret from ``TICKET_SECRET_ENV`` (hex, at least 32 bytes) when it is set: the
    workers of one supervisor (which hands them one), or replicas an operator gives the same one, then
    accept each other's tickets. ``remove``: take it out of ``environ`` (a worker: nothing it starts
    inherits it). False when it is not set (the process keeps its own random secret); ValueError when it
    is not usable."""
    value = environ.pop(TICKET_SECRET_ENV, "") if remove else environ.get(TICKET_SECRET_ENV, "")
    if not value:
        return False
    try:
        secret = bytes.fromhex(value.strip())
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ValueError(f"{TICKET_SECRET_ENV} must be at least 64 hexadecimal digits (32 bytes)")
    set_ticket_secret(secret)
    return True


def set_ticket_secret(secret: bytes) -> None:
    """The process's ticket secret (32 bytes or more). Random per process by default; the workers of one
    supervisor are given the same one (so each accepts the others' tickets) before their listeners are
    built."""
    global _secret
    if len(secret) < 32:
        raise ValueError("a ticket secret has at least 32 bytes")
    _secret = bytes(secret)


class _Ctrl:
    """``SSL_CTX_ctrl`` of the libssl that ``_ssl`` uses, and the way from an SSLContext to its SSL_CTX."""

    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # its symbols and those of the libssl it is linked with
        self.ctrl = lib.SSL_CTX_ctrl
        self.ctrl.restype = ctypes.c_long
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.get_options = lib.SSL_CTX_get_options
        self.get_options.restype = ctypes.c_uint64
        self.get_options.argtypes = [ctypes.c_void_p]
        self.clear_errors = lib.ERR_clear_error
        self.clear_errors.restype = None
        self.clear_errors.argtypes = []
        self._base: type = _ssl._SSLContext

    def pointer(self, ctx: ssl.SSLContext) -> int:
        """The ``SSL_CTX *`` of ``ctx``: CPython's ``PySSLContext`` keeps it first after the object header;
        confirmed by asking OpenSSL for its options and comparing with what Python reports."""
        if not isinstance(ctx, self._base):
            raise TypeError("not an _ssl context")
        address = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not address or self.get_options(address) != int(ctx.options):
            raise TypeError("SSL_CTX not found where CPython keeps it")
        return address


def _load_ctrl() -> _Ctrl | None:
    if sys.implementation.name != "cpython" or ssl.OPENSSL_VERSION_INFO < (1, 1, 0):
        return None
    try:
        ctrl = _Ctrl()
        ctrl.pointer(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    except (OSError, AttributeError, TypeError, ImportError):
        return None
    return ctrl


_CTRL: _Ctrl | bool | None = False  # False: not looked up yet


def _ctrl() -> _Ctrl | None:
    global _CTRL
    if _CTRL is False:
        _CTRL = _load_ctrl()
    return _CTRL if isinstance(_CTRL, _Ctrl) else None


def ticket_keys_settable() -> bool:
    """True when this interpreter's ``ssl`` lets ticket keys be set (see the module docstring)."""
    return _ctrl() is not None


def set_ticket_keys(ctx: ssl.SSLContext, keys: bytes) -> bool:
    """Give ``ctx`` these ticket keys (``TICKET_KEYS_SIZE`` bytes); False when they cannot be set."""
    ctrl = _ctrl()
    if ctrl is None or len(keys) != TICKET_KEYS_SIZE:
        return False
    try:
        address = ctrl.pointer(ctx)
    except TypeError:
        return False
    buf = ctypes.create_string_buffer(keys, TICKET_KEYS_SIZE)
    ok: bool = ctrl.ctrl(address, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, TICKET_KEYS_SIZE, buf) == 1
    ctypes.memset(buf, 0, TICKET_KEYS_SIZE)
    if not ok:
        ctrl.clear_errors()  # leave nothing on OpenSSL's error queue for the next ssl call to report
    return ok


def get_ticket_keys(ctx: ssl.SSLContext) -> bytes | None:
    """The ticket keys ``ctx`` uses now (for tests), or None when they cannot be read."""
    ctrl = _ctrl()
    if ctrl is None:
        return None
    try:
        address = ctrl.pointer(ctx)
    except TypeError:
        return None
    buf = ctypes.create_string_buffer(TICKET_KEYS_SIZE)
    if ctrl.ctrl(address, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, TICKET_KEYS_SIZE, buf) != 1:
        ctrl.clear_errors()
        return None
    return buf.raw


class TicketKeys:
    """The ticket keys of one listener and when they change.

    ``scope``: what tickets are good for (``scope_of``: a ticket of one trust setup is never accepted by
    another). ``period(now)`` is the rotation period's number; ``keys(period)`` its keys. ``context(ctx,
    rebuild)`` returns the context to hand the next handshake: ``ctx`` with this period's keys set, or,
    where keys cannot be set, a fresh context from ``rebuild()`` once a period is over (None from
    ``rebuild``: keep ``ctx`` and try again later). ``clock``: wall-clock seconds (tests)."""

    RETRY = 60.0  # seconds before a failed rebuild is tried again

    def __init__(
        self,
        scope: bytes,
        rotation: float,
        secret: bytes | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if rotation <= 0:
            raise ValueError("ticket_rotation must be > 0")
        self.scope = scope
        self.rotation = rotation
        self._secret = secret
        self.clock = clock or time.time
        self.settable = ticket_keys_settable()
        self.next_change = 0.0  # the clock reading at which the context must change next
        self.rotations = 0  # key changes made after the first (tests, logs)
        self._period: int | None = None

    def period(self, now: float) -> int:
        return int(now // self.rotation)

    def keys(self, period: int) -> bytes:
        secret = self._secret if self._secret is not None else _secret
        info = b"ferryman tls session ticket keys\x00" + period.to_bytes(8, "big") + self.scope
        return HKDF(algorithm=hashes.SHA256(), length=TICKET_KEYS_SIZE, salt=None, info=info).derive(secret)

    def context(self, ctx: ssl.SSLContext, rebuild: Callable[[], ssl.SSLContext | None]) -> ssl.SSLContext:
        """The context for handshakes from now on (see the class docstring); cheap until ``next_change``."""
        now = self.clock()
        if now < self.next_change:
            return ctx
        period = self.period(now)
        first = self._period is None
        if self.settable:
            if set_ticket_keys(ctx, self.keys(period)):
                self._enter(period, first)
                return ctx
            self.settable = False  # this context refused: from now on, fresh contexts
        if first:  # a context just built: its own random keys serve this period
            self._enter(period, first)
            return ctx
        fresh = rebuild()
        if fresh is None:
            self.next_change = now + min(self.RETRY, self.rotation)
            return ctx
        self._enter(period, first)
        return fresh

    def _enter(self, period: int, first: bool) -> None:
        self._period = period
        self.next_change = (period + 1) * self.rotation
        if not first:
            self.rotations += 1


def scope_of(tls: Any) -> bytes:
    """The ticket scope of a ``[listener.tls]``: every setting that decides whom a handshake admits, and the
    contents of its certificate, key and client CA files (processes that share a secret but not a CA file,
    or a replica restarted with a CA removed, must not take each other's tickets)."""
    digest = hashlib.sha256(repr(tls).encode())
    for path in (tls.cert_file, tls.key_file, tls.client_ca_file):
        if path:
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.digest()
