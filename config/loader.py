"""Loading: read the TOML file (or start from the embedded defaults), apply the environment, build and
validate, and raise one :class:`SettingsError` with every problem found."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .build import build_settings
from .env import apply_env
from .errors import SettingIssue, SettingsError
from .keys import ROOT
from .reader import Context, TableReader
from .schema import Settings

__all__ = ["DEFAULTS_SOURCE", "DEFAULT_LISTENER", "EXAMPLE_FILE", "default_settings", "load_settings"]

DEFAULTS_SOURCE = "<defaults>"

# The embedded default listener, used when the file has no `listener` key at all (write `listener = []` for
# none). Loopback on purpose: the default auth handler is allow-all.
DEFAULT_LISTENER: Mapping[str, str] = {
    "name": "mqtt",
    "protocol": "mqtt",
    "address": "127.0.0.1:1884",
    "target": "tcp://127.0.0.1:1883",
}

# A commented settings file using every key, shipped with the package.
EXAMPLE_FILE = Path(__file__).with_name("example.toml")

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def default_settings() -> Settings:
    """The embedded defaults: one MQTT listener on 127.0.0.1:1884 in front of tcp://127.0.0.1:1883, allow-all
    authorization, everything else at its default."""
    return load_settings(None, env={})


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load the settings file at ``path`` (the embedded defaults when None) and apply the ``FERRYMAN_*``
    overrides of ``env`` (``os.environ`` when None).

    Raises :class:`SettingsError` listing every problem: TOML syntax, unknown keys, wrong types, bad values,
    missing keys, duplicates, missing files, bad environment variables.
    """
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
        raw["listener"] = [dict(DEFAULT_LISTENER)]
    tree, origin, env_issues = apply_env(raw, environ)
    ctx = Context(base_dir=base_dir, env_origin=origin)
    settings = build_settings(TableReader(ctx, (), tree, ROOT), source)
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
