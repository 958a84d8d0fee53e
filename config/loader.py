"""Loading: read the TOML file (or start from the embedded defaults), apply the environment, build and
validate, and raise one :class:`SettingsError` with every problem found."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .build import build_settings
from .env import apply_env
from .errors import SettingIssue, SettingsError
from .listener_kinds import ListenerKind, root_keys
from .reader import Context, TableReader
from .schema import Settings

__all__ = ["DEFAULTS_SOURCE", "EXAMPLE_FILE", "default_settings", "load_settings"]

DEFAULTS_SOURCE = "<defaults>"

# A commented settings file using every key, shipped with the package.
EXAMPLE_FILE = Path(__file__).with_name("example.toml")

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def default_settings(
    *, kinds: Mapping[str, ListenerKind] | None = None, default_listeners: Sequence[Mapping[str, Any]] = ()
) -> Settings:
    """The embedded defaults: the ``default_listeners``, allow-all authorization, everything else at its
    default (``ferryman.wiring.default_settings()`` passes the shipped kinds and default listener)."""
    return load_settings(None, env={}, kinds=kinds, default_listeners=default_listeners)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    kinds: Mapping[str, ListenerKind] | None = None,
    default_listeners: Sequence[Mapping[str, Any]] = (),
) -> Settings:
    """Load the settings file at ``path`` (the embedded defaults when None) and apply the ``FERRYMAN_*``
    overrides of ``env`` (``os.environ`` when None).

    ``kinds``: the listener kinds by protocol name (``listener_kinds.py``): which protocols a
    ``[[listener]]`` may name, and each one's keys and checks; the caller wires them (the config layer
    knows no protocol; ``ferryman.wiring.load_settings`` passes the shipped and plugged-in ones).
    ``default_listeners``: the ``[[listener]]`` tables used when the file has no ``listener`` key at all
    (write ``listener = []`` for none).

    Raises :class:`SettingsError` listing every problem: TOML syntax, unknown keys, wrong types, bad values,
    missing keys, duplicates, missing files, bad environment variables.
    """
    if kinds is None:
        raise TypeError(
            "load_settings() needs the listener kinds (kinds=...): the config layer knows no protocol. "
            "Use ferryman.load_settings() / ferryman.wiring.load_settings(), which pass the shipped and "
            "plugged-in ones"
        )
    environ = os.environ if env is None else env
    if path is None:
        source, raw, base_dir = DEFAULTS_SOURCE, {}, os.curdir
    else:
        source = os.fspath(path)
        raw = _read_toml(source)
        if not raw:
            # Empty, blank or comments only: most likely a file caught between truncate and write. Taken as
            # "the defaults" it would drop every user and revoke every session on a SIGHUP: refused.
            raise SettingsError(
                source,
                [
                    SettingIssue(
                        "", "the settings file is empty (no keys at all); write `listener = []` for none"
                    )
                ],
            )
        base_dir = os.path.dirname(os.path.abspath(source))
    if "listener" not in raw:
        raw["listener"] = [dict(listener) for listener in default_listeners]
    root = root_keys(kinds)
    tree, origin, env_issues = apply_env(raw, environ, root)
    ctx = Context(base_dir=base_dir, env_origin=origin)
    settings = build_settings(TableReader(ctx, (), tree, root), source, kinds)
    issues = ctx.issues + env_issues
    if issues:
        raise SettingsError(source, issues)
    return settings


def _read_toml(source: str) -> dict[str, Any]:
    try:
        with open(source, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise SettingsError(
            source, [SettingIssue("", f"cannot read the settings file: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise SettingsError(
            source, [SettingIssue("", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        if match:
            where = f"line {match[1]}, column {match[2]}"
            message = message[: match.start()]
        else:
            where, message = "end of file", message.removesuffix(" (at end of document)")
        raise SettingsError(source, [SettingIssue(where, f"TOML syntax error: {message}")]) from None
