"""The effective settings as plain data and as TOML text, with every secret masked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from .frozen import thaw
from .masking import MASK, SECRET_FIELDS, SECRET_TABLES, mask_secret_table, mask_secrets
from .schema import ListenerOptions, Settings
from .toml_writer import dumps

__all__ = ["render_settings", "settings_to_dict"]

# Dataclass field -> TOML key, where they differ; fields not written at all.
_TOML_KEYS = {"listeners": "listener", "handlers": "handler"}
_NOT_KEYS = frozenset({"source"})
# Arrays of tables left out when empty (an absent `listener` key would mean the default listener instead).
_OMIT_WHEN_EMPTY = frozenset({"handlers", "users"})


def settings_to_dict(settings: Settings, mask: bool = True) -> dict[str, Any]:
    """The settings as a TOML-shaped dict (``listener``, ``handler``, ``auth.users``...) of plain dicts,
    lists and scalars; absent optional tables (tls, bridge.mqtt, bridge.xmpp) and empty option tables are
    left out; secrets are ``"****"`` when ``mask``. Loading the TOML of the unmasked dict gives the
    same settings back."""
    return _to_dict(settings, mask)


def _to_dict(obj: Any, mask: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in _NOT_KEYS:
            continue
        raw = getattr(obj, f.name)
        if isinstance(raw, ListenerOptions):  # a listener kind's own keys: flat in the listener's table
            out.update(raw.masked() if mask else thaw(raw))
            continue
        value = _to_plain(raw, mask)
        if value is None or value == {} or (value == [] and f.name in _OMIT_WHEN_EMPTY):
            continue
        if mask and f.name in SECRET_FIELDS and value:
            value = MASK
        elif mask and f.name in SECRET_TABLES:
            value = mask_secret_table(value)
        elif mask and f.name == "options":
            value = mask_secrets(value)
        out[_TOML_KEYS.get(f.name, f.name)] = value
    return out


def _to_plain(value: Any, mask: bool) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _to_dict(value, mask)
    if isinstance(value, tuple):
        return [_to_plain(item, mask) for item in value]
    if isinstance(value, Mapping):
        return thaw(value)
    return value


def render_settings(settings: Settings) -> str:
    """The effective settings as TOML text, secrets masked (for ``ferryman check`` and start-up logs)."""
    header = f"# ferryman effective settings (source: {settings.source}); secrets are masked\n"
    return header + dumps(settings_to_dict(settings, mask=True))
