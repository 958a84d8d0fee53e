"""What goes wrong while loading settings: one :class:`SettingIssue` per problem, all of them in one
:class:`SettingsError`, so that ``ferryman check`` can print every mistake of a file at once."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["KeyPath", "SettingIssue", "SettingsError", "format_key_path"]

# A key path as the loader walks it: table keys are str, indexes into arrays of tables are int.
KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key_path(path: KeyPath) -> str:
    """``("listener", 0, "tls", "cert_file")`` -> ``listener[0].tls.cert_file``. Keys that are not bare TOML
    keys (possible only inside free-form option tables) are quoted."""
    out: list[str] = []
    for segment in path:
        if isinstance(segment, int):
            out.append(f"[{segment}]")
            continue
        text = segment if _BARE_KEY.fullmatch(segment) else '"' + segment.replace('"', '\\"') + '"'
        out.append(text if not out else "." + text)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class SettingIssue:
    """One problem. ``path`` is where it is: a key path (``auth.users[1].password``), ``env FERRYMAN_...``
    for a value from the environment, ``line L, column C`` for TOML syntax, or "" for the file itself."""

    path: str
    message: str

    def format(self, source: str) -> str:
        return f"{source}: {self.path}: {self.message}" if self.path else f"{source}: {self.message}"


class SettingsError(Exception):
    """Every problem found in a settings file and the environment, not just the first.

    ``str()`` gives one line per problem: ``<source>: <path>: <message>``.
    """

    def __init__(self, source: str, errors: Iterable[SettingIssue]) -> None:
        self.source = source
        self.errors: list[SettingIssue] = list(errors)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(issue.format(self.source) for issue in self.errors)

    @property
    def paths(self) -> Sequence[str]:
        """The paths of the problems, in the order found (handy in tests and in tooling)."""
        return [issue.path for issue in self.errors]
