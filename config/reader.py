"""Typed, forgiving access to one parsed TOML table: every accessor returns a usable value (the default
on error) and records what was wrong, so that one pass over a file finds all of its problems."""

from __future__ import annotations

import datetime
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import KeyPath, SettingIssue, format_key_path
from .frozen import FrozenMap
from .keys import Kind, Node, Table, TableArray
from .schema import MAX_WORKERS

__all__ = ["Context", "TableReader", "describe", "suggest"]


def describe(value: Any) -> str:
    """How an error message names the type (and value) of what was found."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def suggest(word: str, candidates: Sequence[str]) -> str | None:
    """The closest candidate to a misspelt ``word``, if one is close enough."""
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        return lowered.get(word.lower())
    return matches[0]


@dataclass
class Context:
    """What one load needs everywhere: where relative paths start, which values came from the environment
    (their problems are reported as ``env FERRYMAN_...``), and the problems found so far."""

    base_dir: str
    env_origin: Mapping[KeyPath, str] = field(default_factory=dict)
    issues: list[SettingIssue] = field(default_factory=list)

    def _env_name(self, path: KeyPath) -> str | None:
        # Also items of an array set from one variable: auth.users[0].publish[2] came from ...PUBLISH.
        for end in range(len(path), 0, -1):
            name = self.env_origin.get(path[:end])
            if name is not None:
                return name
        return None

    def where(self, path: KeyPath) -> str:
        name = self._env_name(path)
        return f"env {name}" if name is not None else format_key_path(path)

    def report(self, path: KeyPath, message: str) -> None:
        self.issues.append(SettingIssue(self.where(path), message))

    def resolve(self, path: KeyPath, value: str) -> str:
        """An absolute path: relative ones from the file are taken from the file's directory, relative ones
        from the environment from the working directory (as a shell user expects). Symlinks are kept, so
        that a rotated certificate behind a link (Kubernetes secrets) is picked up."""
        base = os.curdir if self._env_name(path) is not None else self.base_dir
        return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


_MISSING: Any = object()


class TableReader:
    """Reads one table of the tree described by ``keys.ROOT``. Unknown keys are reported on creation."""

    def __init__(
        self, ctx: Context, path: KeyPath, data: Mapping[str, Any], spec: Table, check_unknown: bool = True
    ) -> None:
        self.ctx = ctx
        self.path = path
        self.data = data
        self.spec = spec
        known = list(spec.keys)
        for key in data if check_unknown else ():
            if key not in spec.keys:
                hint = suggest(key, known)
                more = f" (did you mean {hint!r}?)" if hint else f"; known keys: {', '.join(known)}"
                ctx.report((*path, key), f"unknown key {key!r}{more}")

    def has(self, key: str) -> bool:
        return key in self.data

    def report(self, key: str | int | None, message: str) -> None:
        """Record a problem at ``key`` of this table (or at the table itself for None)."""
        self.ctx.report(self.path if key is None else (*self.path, key), message)

    def _value(self, key: str, kind: Node) -> Any:
        assert self.spec.keys.get(key) == kind, (
            f"{format_key_path((*self.path, key))} is not {kind} in keys.py"
        )
        return self.data.get(key, _MISSING)

    def _wrong_type(self, key: str, kind: Kind, value: Any) -> None:
        self.report(key, f"expected {kind.value}, got {describe(value)}")

    def string(self, key: str, default: str | None = None, choices: Sequence[str] = ()) -> str:
        """A string; required when ``default`` is None; one of ``choices`` when given."""
        value = self._value(key, Kind.STR)
        if value is _MISSING:
            if default is None:
                self.report(key, "missing (required)")
                return ""
            return default
        if not isinstance(value, str):
            self._wrong_type(key, Kind.STR, value)
            return default or ""
        if choices and value not in choices:
            hint = suggest(value, choices)
            more = f" (did you mean {hint!r}?)" if hint else ""
            self.report(key, f"{value!r} is not one of {', '.join(choices)}{more}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._value(key, Kind.INT)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong_type(key, Kind.INT, value)
            return default
        if not low <= value <= high:
            self.report(key, f"{value} is out of range {low}..{high}")
        return value

    def positive_number(self, key: str, default: float, allow_zero: bool = False) -> float:
        """A finite number > 0, or >= 0 with ``allow_zero`` (TOML integers are accepted)."""
        value = self._value(key, Kind.FLOAT)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._wrong_type(key, Kind.FLOAT, value)
            return default
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0 (0 turns it off)" if allow_zero else "> 0"
            self.report(key, f"must be a finite number {bound}, got {value}")
        return float(value)

    def number(self, key: str, default: float, low: float | None, high: float | None) -> float:
        """A finite number (TOML integers are accepted) within ``low``..``high`` (None: unbounded)."""
        value = self._value(key, Kind.FLOAT)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._wrong_type(key, Kind.FLOAT, value)
            return default
        if not math.isfinite(value):
            self.report(key, f"must be a finite number, got {value}")
        elif (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{'' if low is None else low}..{'' if high is None else high}"
            self.report(key, f"{value} is out of range {bounds}")
        return float(value)

    def workers(self, key: str, default: int | str) -> int | str:
        """A count of worker processes: an integer 1..MAX_WORKERS, or the string ``"auto"``."""
        value = self._value(key, Kind.INT_OR_AUTO)
        if value is _MISSING:
            return default
        if isinstance(value, str):
            if value == "auto":
                return value
            self.report(key, f'expected an integer or "auto", got {describe(value)}')
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong_type(key, Kind.INT_OR_AUTO, value)
            return default
        if not 1 <= value <= MAX_WORKERS:
            self.report(key, f'{value} is out of range 1..{MAX_WORKERS} (or "auto": one per CPU)')
            return default
        return value

    def with_spec(self, spec: Table) -> TableReader:
        """The same table read against another key tree (a listener's kind's), without reporting unknown
        keys again."""
        return TableReader(self.ctx, self.path, self.data, spec, check_unknown=False)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._value(key, Kind.BOOL)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self._wrong_type(key, Kind.BOOL, value)
            return default
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._value(key, Kind.STRS)
        if value is _MISSING:
            return ()
        if not isinstance(value, list | tuple):
            self._wrong_type(key, Kind.STRS, value)
            return ()
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.ctx.report((*self.path, key, index), f"expected a string, got {describe(item)}")
        return tuple(item for item in value if isinstance(item, str))

    def free(self, key: str) -> FrozenMap:
        """A free-form table (any keys, any TOML values), frozen."""
        value = self._value(key, Kind.FREE)
        if value is _MISSING:
            return FrozenMap()
        if not isinstance(value, Mapping):
            self._wrong_type(key, Kind.FREE, value)
            return FrozenMap()
        return FrozenMap(value)

    def table(self, key: str) -> TableReader | None:
        """The sub-table ``key``, or None when it is absent (or not a table: reported)."""
        spec = self.spec.keys.get(key)
        assert isinstance(spec, Table), f"{key} is not a table in keys.py"
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return None
        if not isinstance(value, Mapping):
            self.report(
                key, f"expected a table ([{format_key_path((*self.path, key))}]), got {describe(value)}"
            )
            return None
        return TableReader(self.ctx, (*self.path, key), value, spec)

    def section(self, key: str) -> TableReader:
        """The sub-table ``key``; an empty one (all defaults) when absent."""
        return self.table(key) or TableReader(self.ctx, (*self.path, key), {}, self._table_spec(key))

    def _table_spec(self, key: str) -> Table:
        spec = self.spec.keys[key]
        assert isinstance(spec, Table)
        return spec

    def tables(self, key: str) -> list[TableReader]:
        """The entries of the array of tables ``key`` (``[[key]]``); [] when absent."""
        spec = self.spec.keys.get(key)
        assert isinstance(spec, TableArray), f"{key} is not an array of tables in keys.py"
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return []
        dotted = format_key_path((*self.path, key))
        if not isinstance(value, list):
            self.report(key, f"expected an array of tables ([[{dotted}]]), got {describe(value)}")
            return []
        readers = []
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                # An entry of a variant (a listener of a known protocol) has its variant's keys; one naming
                # an unknown variant gets that one error, not one per key of a kind that isn't there.
                by = item.get(spec.by) if spec.by else None
                unknown_variant = isinstance(by, str) and by not in spec.variants
                readers.append(
                    TableReader(
                        self.ctx, (*self.path, key, index), item, spec.item_for(item), not unknown_variant
                    )
                )
            else:
                self.ctx.report((*self.path, key, index), f"expected a table, got {describe(item)}")
        return readers
