"""Listener kinds: what a listener protocol declares about its ``[[listener]]`` tables.

The config layer knows no protocol. Whoever loads settings hands the loader a mapping of protocol name ->
:class:`ListenerKind` (``ferryman/wiring.py`` builds it from the shipped listeners and the
``ferryman.listeners`` entry points: each listener class carries its kind as the class attribute ``kind``).
A kind says

- which ``target`` schemes its listeners forward to (``PUBLISH_TARGET``, ``"mqtt"``, = publish mode; none:
  its listeners take no target),
- which keys of the *shared vocabulary* apply to it (``SHARED_KEYS``: the optional keys of
  :class:`~.schema.ListenerSettings` the shipped listeners share; set, to other than its default, on a
  listener whose kind does not take it, a shared key is an error naming the kinds that do),
- the keys it owns beyond the common and shared ones (:class:`ListenerKey`: name, type, default, doc,
  secret), written flat in the listener's table, converted and checked by the loader and stored on
  ``ListenerSettings.options`` (a :class:`ListenerOptions`, masked like every other secret),
- and ``validate(listener_settings)``: its own cross-key checks, run on a listener whose keys are each
  valid; every message is reported with the other settings errors, at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .keys import LISTENER_TABLE, ROOT, Kind, Table, TableArray
from .schema import ListenerOptions, ListenerSettings

__all__ = [
    "COMMON_KEYS",
    "SHARED_KEYS",
    "KindIssue",
    "ListenerKey",
    "ListenerKind",
    "ListenerOptions",
    "join_names",
    "not_applicable",
    "root_keys",
    "shared_except",
]

#: Keys every listener has, whatever its kind (``target`` only when the kind names target schemes).
COMMON_KEYS: tuple[str, ...] = ("name", "protocol", "address", "target")
#: The shared vocabulary: every other key of :class:`ListenerSettings`; a kind lists the ones it takes.
SHARED_KEYS: frozenset[str] = frozenset(LISTENER_TABLE.keys) - frozenset(COMMON_KEYS)

#: A message of a kind's ``validate``: reported at the listener's table, or, as ``(key, message)``, at a key.
KindIssue = str | tuple[str, str]

# How "this shared key is not for this kind" is said; {kinds}: the kinds that take it ("a, b and c").
_NOT_APPLICABLE = {
    "path_prefix": "only {kinds} listeners take a path prefix",
    "allowed_origins": "only {kinds} listeners check the Origin header",
    "bypass": "only {kinds} listeners have a bypass list",
    "psk": "pre-shared keys are for {kinds} listeners (DTLS)",
}
_NOT_APPLICABLE_DEFAULT = "only {kinds} listeners take {key}"


def shared_except(*keys: str) -> frozenset[str]:
    """The shared vocabulary without ``keys`` (for a kind that takes nearly all of it)."""
    unknown = set(keys) - SHARED_KEYS
    if unknown:
        raise ValueError(f"not shared listener keys: {', '.join(sorted(unknown))}")
    return SHARED_KEYS - frozenset(keys)


def join_names(names: Sequence[str]) -> str:
    """``["a"]`` -> ``a``; ``["a", "b"]`` -> ``a and b``; ``["a", "b", "c"]`` -> ``a, b and c``."""
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _no_checks(settings: ListenerSettings) -> Sequence[KindIssue]:
    return ()


@dataclass(frozen=True, slots=True)
class ListenerKey:
    """One key a kind owns. ``default`` None makes it required. Numbers may be bounded (``minimum``,
    ``maximum``, inclusive); strings may be limited to ``choices``. ``secret`` masks its value wherever
    settings are printed (keys named like a secret, ``*password*``, ``*token*``..., are masked anyway)."""

    name: str
    type: Kind
    default: Any = None
    doc: str = ""
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True, slots=True)
class ListenerKind:
    """What a listener protocol declares about its settings (see the module doc). Attach it to the
    listener class as ``kind = ...``; the entry-point name must be ``protocol``."""

    protocol: str
    target_schemes: tuple[str, ...] = ()
    shared_keys: frozenset[str] = frozenset()
    keys: tuple[ListenerKey, ...] = ()
    validate: Callable[[ListenerSettings], Iterable[KindIssue]] = _no_checks
    doc: str = ""
    #: The socket type its address is bound with: "tcp" or "udp". Two listeners may share a host:port only
    #: when their transports differ (a UDP and a TCP socket do not collide).
    transport: str = "tcp"
    _table: Table = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.protocol or not self.protocol.strip():
            raise ValueError("a listener kind needs a protocol name")
        if self.transport not in ("tcp", "udp"):
            raise ValueError(f"{self.protocol}: transport must be 'tcp' or 'udp', not {self.transport!r}")
        object.__setattr__(self, "shared_keys", frozenset(self.shared_keys))
        object.__setattr__(self, "keys", tuple(self.keys))
        unknown = self.shared_keys - SHARED_KEYS
        if unknown:
            raise ValueError(f"{self.protocol}: not shared listener keys: {', '.join(sorted(unknown))}")
        seen: set[str] = set()
        for key in self.keys:
            if key.name in LISTENER_TABLE.keys:
                raise ValueError(f"{self.protocol}: key {key.name!r} is a shared listener key (a common one)")
            if key.name in seen:
                raise ValueError(f"{self.protocol}: key {key.name!r} is declared twice")
            if key.name == "options":
                raise ValueError(f"{self.protocol}: 'options' is reserved")
            seen.add(key.name)
        own = {key.name: key.type for key in self.keys}
        table = {k: v for k, v in LISTENER_TABLE.keys.items() if k in COMMON_KEYS or k in self.shared_keys}
        object.__setattr__(self, "_table", Table({**table, **own}))

    @property
    def table(self) -> Table:
        """The keys a listener of this kind may have: the common ones, its shared ones and its own."""
        return self._table

    @property
    def secret_keys(self) -> frozenset[str]:
        return frozenset(key.name for key in self.keys if key.secret)

    @property
    def takes_target(self) -> bool:
        return bool(self.target_schemes)

    def default_options(self) -> ListenerOptions:
        """The kind's own keys at their defaults (required ones left out): for settings built by hand."""
        return ListenerOptions(
            {key.name: key.default for key in self.keys if not key.required}, self.secret_keys
        )


def not_applicable(key: str, kinds: Mapping[str, ListenerKind]) -> str:
    """Why ``key`` (a shared one) may not be set on a listener of a kind that does not take it."""
    takers = [name for name, kind in kinds.items() if key in kind.shared_keys]
    if not takers:
        return f"no listener kind takes {key}"
    return _NOT_APPLICABLE.get(key, _NOT_APPLICABLE_DEFAULT).format(kinds=join_names(takers), key=key)


def root_keys(kinds: Mapping[str, ListenerKind]) -> Table:
    """The key tree for settings with these kinds: ``[[listener]]`` takes the shared keys and every kind's
    own keys (for the unknown-key check and the environment), one table per kind by ``protocol``."""
    union: dict[str, Any] = dict(LISTENER_TABLE.keys)
    for kind in kinds.values():
        for key in kind.keys:
            union.setdefault(key.name, key.type)
    # A variant keeps every shared key: one its kind does not take is reported, by name, when built.
    variants = {
        name: Table({**LISTENER_TABLE.keys, **{key.name: key.type for key in kind.keys}})
        for name, kind in kinds.items()
    }
    listener = TableArray(Table(union), by="protocol", variants=variants)
    return Table({**ROOT.keys, "listener": listener})
