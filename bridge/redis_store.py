"""The Redis implementation of the bridge's ``SubscriptionStore`` (``[cluster] redis``): what the replica
that takes the bridge over reads, whichever replica wrote it.

A store is one Redis set (the wiring names it ``<key_prefix>bridge:<client_id>:subscriptions``, and
``...:marks:<rule>`` for a rule set's marks) with one member per (JID, filter): ``jid`` U+0000 ``filter``
(neither a bare JID nor an MQTT filter can hold U+0000). Each change is one atomic Lua script, acknowledged
by Redis before the call returns; how durable an acknowledged write is beyond that is Redis's own
persistence (AOF or RDB, the operator's choice). ``<key>:schema`` records the layout's version; a store
written by a newer layout is refused, as the SQLite store does.

Fencing. Given ``guard`` (the bridge lease's key and this replica's token, ``lease.RedisLease``), every
write first checks, in the same script, that Redis still holds that token under that key: a replica that
has lost its lease cannot change the subscriptions any more, not even in the moment before it has stopped
its bridge. Such a write raises :class:`LeaseLost`.

The client is passed in (``redis.Redis``; the store does not close it). The Redis calls block the calling
greenlet only (redis-py on gevent-patched sockets).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .store import StoreError

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["SCHEMA_VERSION", "LeaseLost", "RedisStore"]

SCHEMA_VERSION = 1
_SEP = "\x00"

# KEYS[1]: the set; KEYS[2]: the lease key (the set again without a guard); ARGV[1]: the token ("" = none)
_GUARD = "if ARGV[1] ~= '' and redis.call('get', KEYS[2]) ~= ARGV[1] then return -1 end\n"
_ADD = _GUARD + "return redis.call('sadd', KEYS[1], ARGV[2])"
_REMOVE = _GUARD + "return redis.call('srem', KEYS[1], ARGV[2])"
_REMOVE_JID = (
    _GUARD
    + """
local n = 0
local prefix = ARGV[2]
for _, member in ipairs(redis.call('smembers', KEYS[1])) do
  if string.sub(member, 1, #prefix) == prefix then
    redis.call('srem', KEYS[1], member)
    n = n + 1
  end
end
return n
"""
)


class LeaseLost(StoreError):
    """A write refused because this replica no longer holds the bridge lease it was made under."""


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisStore:
    """The subscriptions in the Redis set ``key`` (see the module docstring). ``guard``: (lease key, token)
    every write is conditional on, or None."""

    def __init__(self, client: Redis, key: str, *, guard: tuple[str, str] | None = None) -> None:
        self.client = client
        self.key = key
        self._keys = [key, guard[0]] if guard else [key, key]
        self._token = guard[1] if guard else ""
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
        self._remove_jid = client.register_script(_REMOVE_JID)
        schema = f"{key}:schema"
        client.set(schema, SCHEMA_VERSION, nx=True)
        version = int(_text(client.get(schema) or SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{key}: schema version {version} is newer than this ferryman's ({SCHEMA_VERSION})"
            )

    def schema_version(self) -> int:
        return int(_text(self.client.get(f"{self.key}:schema") or 0))

    def _write(self, script: Any, arg: str) -> int:
        result = int(script(keys=self._keys, args=[self._token, arg]))
        if result < 0:
            raise LeaseLost(f"{self.key}: not written, this replica no longer holds the bridge lease")
        return result

    def add(self, jid: str, topic_filter: str) -> bool:
        """Persist a subscription; True when it was not stored yet."""
        return self._write(self._add, jid + _SEP + topic_filter) > 0

    def remove(self, jid: str, topic_filter: str) -> bool:
        """Forget a subscription; True when it was stored."""
        return self._write(self._remove, jid + _SEP + topic_filter) > 0

    def remove_jid(self, jid: str) -> int:
        """Forget every subscription of ``jid``; the number removed."""
        return self._write(self._remove_jid, jid + _SEP)

    def load(self) -> dict[str, set[str]]:
        return _by_jid(self.client.sscan_iter(self.key, count=1000))

    def close(self) -> None:
        """Nothing to do: the client is the caller's."""


def _by_jid(members: Iterable[Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for member in members:
        jid, sep, topic_filter = _text(member).partition(_SEP)
        if sep:
            out.setdefault(jid, set()).add(topic_filter)
    return out
