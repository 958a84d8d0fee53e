"""Password hashes for the static handler: ``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>``.

Made with ``ferryman hash-password``; verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

__all__ = ["hash_error", "hash_password", "verify_password"]

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
