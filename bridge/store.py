"""Persistence of the bridge's JID subscriptions: the interface (``SubscriptionStore``) and its SQLite
implementation (``Store``, ``[bridge.xmpp].store``); the Redis one is ``redis_store.RedisStore`` (with
``[cluster] redis``), chosen by the bridge wiring.

One row per (JID, filter); a restart reloads them with ``load()`` and the bridge subscribes again. WAL mode
so a reader never blocks the writer; every change is its own transaction, committed before the call returns,
so a crash loses at most the change in flight. A ``schema_version`` table lets a later release migrate; a file
written by a newer schema is refused rather than misread. ``:memory:`` works for tests.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "SubscriptionStore"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    jid TEXT NOT NULL,
    filter TEXT NOT NULL,
    PRIMARY KEY (jid, filter)
) WITHOUT ROWID
"""


class StoreError(RuntimeError):
    pass


class SubscriptionStore(Protocol):
    """What the XMPP bridge keeps of its subscriptions: (JID, filter) pairs. Every change is durable when
    the call returns; ``load`` is every pair, by JID. Owned by one actor."""

    def add(self, jid: str, topic_filter: str) -> bool:
        """Persist a subscription; True when it was not stored yet."""
        ...

    def remove(self, jid: str, topic_filter: str) -> bool:
        """Forget a subscription; True when it was stored."""
        ...

    def remove_jid(self, jid: str) -> int:
        """Forget every subscription of ``jid``; the number removed."""
        ...

    def load(self) -> dict[str, set[str]]: ...

    def close(self) -> None: ...


class Store:
    """Owned by one actor; a lock makes an accidental second caller safe rather than corrupting."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        # check_same_thread=False: the actor that owns the store may run on a thread other than its creator.
        self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] if row and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this ferryman's ({SCHEMA_VERSION})"
                )
            if version < 1:
                db.execute(_SCHEMA)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0])

    def add(self, jid: str, topic_filter: str) -> bool:
        """Persist a subscription; True when it was not stored yet."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO subscriptions (jid, filter) VALUES (?, ?)", (jid, topic_filter)
            )
            return cur.rowcount > 0

    def remove(self, jid: str, topic_filter: str) -> bool:
        """Forget a subscription; True when it was stored."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM subscriptions WHERE jid = ? AND filter = ?", (jid, topic_filter))
            return cur.rowcount > 0

    def remove_jid(self, jid: str) -> int:
        """Forget every subscription of ``jid``; the number removed."""
        with self._tx() as db:
            return db.execute("DELETE FROM subscriptions WHERE jid = ?", (jid,)).rowcount

    def load(self) -> dict[str, set[str]]:
        with self._lock:
            rows = self._db.execute("SELECT jid, filter FROM subscriptions ORDER BY jid, filter").fetchall()
        out: dict[str, set[str]] = {}
        for jid, topic_filter in rows:
            out.setdefault(jid, set()).add(topic_filter)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
