"""Environment overrides: ``FERRYMAN_LISTENER__0__TLS__CERT_FILE=...`` sets ``listener[0].tls.cert_file``.

The part after the prefix, split on ``__`` and lower-cased, is the key path; numeric parts index arrays of
tables (the current length appends an entry). Values are converted to the key's type. Every variable under
the prefix must name a key: a typo must not pass silently.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from .errors import KeyPath, SettingIssue, format_key_path
from .keys import ROOT, Kind, Node, Table, TableArray
from .reader import describe, suggest

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "TICKET_SECRET_ENV",
    "apply_env",
    "env_name",
    "parse_bool",
    "parse_strings",
]

ENV_PREFIX = "FERRYMAN_"
# Reserved for the settings file's path (read by the CLI, never a key).
CONFIG_ENV = "FERRYMAN_CONFIG"
#: Not a setting either: the TLS session-ticket secret shared by processes (protocols/tls/tickets.py)
TICKET_SECRET_ENV = "FERRYMAN_TLS_TICKET_SECRET"

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class _EnvError(Exception):
    pass


def env_name(path: KeyPath) -> str:
    """The variable that overrides a key path: ``("listener", 0, "address")`` ->
    ``FERRYMAN_LISTENER__0__ADDRESS``."""
    return ENV_PREFIX + "__".join(str(segment).upper() for segment in path)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false, 1/0, yes/no), got {text!r}")


def _toml_array(text: str) -> list[Any]:
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        # The position would count the "v = " added above: leave it out.
        raise ValueError(f"not a TOML array: {re.sub(r' [(]at .*[)]$', '', str(exc))}") from None
    if not isinstance(value, list):
        raise ValueError(f"not a TOML array: {text!r}")
    return value


def parse_strings(text: str) -> tuple[str, ...]:
    """A TOML inline array when ``text`` starts with '[' (``["a", "b"]``), else comma-separated (``a, b``)."""
    if text.lstrip().startswith("["):
        value = _toml_array(text)
        if not all(isinstance(item, str) for item in value):
            raise ValueError(f"expected an array of strings, got {text!r}")
        return tuple(value)
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _convert(text: str, kind: Kind) -> Any:
    if kind is Kind.STR:
        return text
    if kind is Kind.BOOL:
        return parse_bool(text)
    if kind is Kind.STRS:
        return list(parse_strings(text))
    if kind is Kind.INT_OR_AUTO and text.strip() == "auto":
        return "auto"
    try:
        return int(text.strip()) if kind in (Kind.INT, Kind.INT_OR_AUTO) else float(text.strip())
    except ValueError:
        raise ValueError(f"expected {kind.value}, got {text!r}") from None


def _convert_like(text: str, existing: Any) -> Any:
    """A value for a free-form option, typed like the value it replaces (a new key gets a string, or an
    array when the text starts with '[')."""
    if isinstance(existing, bool):
        return parse_bool(text)
    if isinstance(existing, int):
        return _convert(text, Kind.INT)
    if isinstance(existing, float):
        return _convert(text, Kind.FLOAT)
    if isinstance(existing, list) or (existing is None and text.lstrip().startswith("[")):
        return _toml_array(text) if text.lstrip().startswith("[") else list(parse_strings(text))
    return text


def apply_env(
    raw: dict[str, Any], env: Mapping[str, str], root: Table = ROOT
) -> tuple[dict[str, Any], dict[KeyPath, str], list[SettingIssue]]:
    """Apply the ``FERRYMAN_*`` variables of ``env`` to the parsed TOML tree ``raw``; ``root`` is the key
    tree (``listener_kinds.root_keys(kinds)`` adds the listener kinds' own keys).

    Returns the new tree (``raw`` is not changed), which key path each variable set, and the problems.
    """
    tree = copy.deepcopy(raw)
    origin: dict[KeyPath, str] = {}
    issues: list[SettingIssue] = []
    not_settings = (CONFIG_ENV, TICKET_SECRET_ENV)
    names = [name for name in env if name.startswith(ENV_PREFIX) and name not in not_settings]
    # Lower indexes first, so that ..._1__X after ..._0__X appends in order whatever the dict order.
    names.sort(key=lambda name: [(0, int(s), "") if _is_index(s) else (1, 0, s) for s in name.split("__")])
    for name in names:
        try:
            path, leaf = _resolve(name, root, tree)
            trial = copy.deepcopy(tree)
            _assign(trial, path, leaf, env[name])
        except (_EnvError, ValueError) as exc:
            issues.append(SettingIssue(f"env {name}", str(exc)))
        else:
            tree = trial
            origin[path] = name
    return tree, origin, issues


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()


def _resolve(name: str, root: Table = ROOT, tree: Any = None) -> tuple[KeyPath, Kind]:
    """The key path a variable names and the kind of its value, checked against the key tree ``root``
    only (an entry of an array of tables by variant, e.g. a listener by its protocol, as ``tree`` has it)."""
    parts = name[len(ENV_PREFIX) :].split("__")
    if not all(parts):
        raise _EnvError(
            "malformed name: parts are separated by a double underscore, e.g. FERRYMAN_LOG__LEVEL"
        )
    path: list[str | int] = []
    node: Node = root
    cursor: Any = tree  # the part of the tree at ``path``, when there is one
    for part in (p.lower() for p in parts):
        if isinstance(node, Table):
            cursor = cursor.get(part) if isinstance(cursor, dict) else None
            if part not in node.keys:
                hint = suggest(part, list(node.keys))
                where = f" in {_dotted(path)}" if path else ""
                known = ", ".join(node.keys)
                more = f" (did you mean {env_name((*path, hint))}?)" if hint else f"; known keys: {known}"
                raise _EnvError(f"unknown key {part!r}{where}{more}")
            path.append(part)
            node = node.keys[part]
        elif isinstance(node, TableArray):
            if not _is_index(part):
                raise _EnvError(
                    f"{_dotted(path)} is an array of tables: give an index, e.g. {env_name((*path, 0, part))}"
                )
            index = int(part)
            path.append(index)
            cursor = cursor[index] if isinstance(cursor, list) and index < len(cursor) else None
            node = node.item_for(cursor)
        elif node is Kind.FREE:
            path.append(part)  # free-form options: any key, nested tables allowed
        else:
            raise _EnvError(f"{_dotted(path)} is {node.value}, not a table")
    if isinstance(node, Table):
        example = env_name((*path, next(iter(node.keys))))
        raise _EnvError(f"{_dotted(path)} is a table: set one of its keys, e.g. {example}")
    if isinstance(node, TableArray):
        raise _EnvError(
            f"{_dotted(path)} is an array of tables: set keys of an entry, e.g. {env_name((*path, 0))}__..."
        )
    if node is Kind.FREE and path[-1] == "options":
        raise _EnvError(f"{_dotted(path)} is a table: set one of its keys, e.g. {env_name((*path, 'name'))}")
    return tuple(path), node


def _assign(tree: dict[str, Any], path: KeyPath, leaf: Kind, text: str) -> None:
    """Set ``path`` in ``tree`` to ``text`` converted, creating missing tables and appending array entries."""
    container: Any = tree
    for depth, segment in enumerate(path[:-1]):
        following = path[depth + 1]
        if isinstance(segment, int):
            container = _entry(container, segment, path[:depth])
            continue
        child = container.get(segment)
        if child is None:
            child = [] if isinstance(following, int) else {}
            container[segment] = child
        expected = list if isinstance(following, int) else dict
        if not isinstance(child, expected):
            what = "an array of tables" if expected is list else "a table"
            raise _EnvError(
                f"cannot apply: {_dotted(path[: depth + 1])} in the settings file is not {what} "
                f"but {describe(child)}"
            )
        container = child
    key = path[-1]
    assert isinstance(key, str)
    existing = container.get(key)
    if leaf is Kind.FREE and isinstance(existing, dict):
        raise _EnvError(f"{_dotted(path)} is a table: set one of its keys")
    value = _convert_like(text, existing) if leaf is Kind.FREE else _convert(text, leaf)
    container[key] = value


def _entry(array: list[Any], index: int, array_path: KeyPath) -> dict[str, Any]:
    if index < len(array):
        entry = array[index]
        if not isinstance(entry, dict):
            raise _EnvError(
                f"cannot apply: {_dotted((*array_path, index))} in the settings file is not a table"
            )
        return entry
    if index == len(array):
        entry = {}
        array.append(entry)
        return entry
    count = f"{len(array)} entr{'y' if len(array) == 1 else 'ies'}"
    where = _dotted(array_path)
    raise _EnvError(f"index {index} is beyond the end of {where} ({count}); {len(array)} appends a new entry")


def _dotted(path: KeyPath | list[str | int]) -> str:
    return format_key_path(tuple(path))
