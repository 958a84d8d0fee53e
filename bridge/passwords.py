"""Password hashes for the static handler: ``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>``.

Made with ``ferryman hash-password``; verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["VerifiedPasswords", "hash_error", "hash_password", "verify_password"]

SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 200_000


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def hash_error(encoded: str) -> str | None:
    """Why ``encoded`` is not a hash this module can verify, or None."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        return (
            f"password_hash must look like {SCHEME}$<iterations>$<salt>$<hash> (see `ferryman hash-password`)"
        )
    if not parts[1].isdigit() or int(parts[1]) < 1000:
        return "password_hash iterations must be a number of at least 1000"
    try:
        base64.b64decode(parts[2], validate=True)
        base64.b64decode(parts[3], validate=True)
    except ValueError:
        return "password_hash salt and hash must be base64"
    return None


def verify_password(password: bytes, encoded: str) -> bool:
    if hash_error(encoded):
        return False
    _, iterations, salt, digest = encoded.split("$")
    got = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(got, base64.b64decode(digest))


class VerifiedPasswords:
    """Successful hash checks, remembered: a fleet that reconnects at once pays PBKDF2 (about 0.1 s of CPU
    per check at the default iterations) once per device, not on every reconnect.

    Only successes are kept, at most ``size`` (least recently used dropped first). An entry's key is an
    HMAC-SHA256 of the stored hash and the password under a random key made per instance, so the cache
    holds neither a password nor a fast hash that guesses could be tested against without that key. A
    hash changed by a reload is part of the key: entries of the old one are never hit again (and age out).
    ``slow`` runs the real check on a miss (a thread pool's apply keeps the
    event loop serving while it runs: CPython releases the GIL inside PBKDF2)."""

    def __init__(self, slow: Callable[[bytes, str], bool], size: int = 10_000) -> None:
        self._slow = slow
        self._size = size
        self._key = os.urandom(32)
        self._ok: OrderedDict[bytes, None] = OrderedDict()

    def verify(self, password: bytes, encoded: str) -> bool:
        mac = hmac.new(self._key, encoded.encode() + b"\0" + password, hashlib.sha256).digest()
        if mac in self._ok:
            self._ok.move_to_end(mac)
            return True
        if not self._slow(password, encoded):
            return False
        self._ok[mac] = None
        if len(self._ok) > self._size:
            self._ok.popitem(last=False)
        return True
