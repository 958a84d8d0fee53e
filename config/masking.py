"""Secrets never reach a log line, a terminal or a repr(): the rules of what counts as a secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "SECRET_FIELDS", "SECRET_TABLES", "is_secret_key", "mask_secret_table", "mask_secrets"]

MASK = "****"

# Fields of the typed settings that hold secrets. (key_file is a path, not a secret: it stays visible.)
SECRET_FIELDS = frozenset({"password", "password_hash", "secret"})

# Free-form tables of the typed settings whose every value is a secret (their keys stay visible): a
# listener's [listener.psk] maps DTLS identities to pre-shared keys. (A listener kind's own secret keys are
# masked by ListenerOptions.masked(), schema.py.)
SECRET_TABLES = frozenset({"psk"})

# In free-form tables (handler options) any key containing one of these words is a secret.
_SECRET_WORDS = ("password", "secret", "token", "key", "psk")


def is_secret_key(key: str) -> bool:
    """True for keys of free-form tables whose values must be masked (``api_key``, ``Token``, ...)."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def mask_secret_table(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a :data:`SECRET_TABLES` table: the keys (identities) kept, every value ``"****"``."""
    return {key: MASK for key in mapping}


def mask_secrets(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``mapping`` with the value of every secret-looking key (containing password, secret, token
    or key, any case) replaced by ``"****"``, recursively through nested tables and arrays of tables.

    Empty strings stay empty: "no password" is not a secret and is worth seeing.
    """
    return {key: _mask_value(key, value) for key, value in mapping.items()}


def _mask_value(key: str, value: Any) -> Any:
    if is_secret_key(key):
        return value if value == "" else MASK
    if isinstance(value, Mapping):
        return mask_secrets(value)
    if isinstance(value, list | tuple):
        return [mask_secrets(item) if isinstance(item, Mapping) else item for item in value]
    return value
