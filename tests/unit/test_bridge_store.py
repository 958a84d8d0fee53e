"""SQLite persistence of bridge subscriptions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ferryman.bridge.store import SCHEMA_VERSION, Store, StoreError

A = "alice@localhost"
B = "bob@localhost"


def test_memory_store() -> None:
    with Store(":memory:") as s:
        assert s.load() == {}
        assert s.add(A, "a/#") is True
        assert s.add(A, "a/#") is False
        assert s.add(A, "b")
        assert s.add(B, "b")
        assert s.load() == {A: {"a/#", "b"}, B: {"b"}}
        assert s.remove(A, "b") is True
        assert s.remove(A, "b") is False
        assert s.remove_jid(A) == 1
        assert s.load() == {B: {"b"}}
        assert s.schema_version() == SCHEMA_VERSION


def test_reopen_persists(tmp_path: Path) -> None:
    path = str(tmp_path / "bridge.sqlite3")
    s = Store(path)
    s.add(A, "a/+/c")
    s.add(A, "ünï/#")
    s.add(B, "x")
    s.remove(B, "x")
    s.close()
    s2 = Store(path)
    assert s2.load() == {A: {"a/+/c", "ünï/#"}}
    assert s2.schema_version() == SCHEMA_VERSION
    s2.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
    db.close()


def test_concurrent_open_sees_committed_changes(tmp_path: Path) -> None:
    path = str(tmp_path / "bridge.sqlite3")
    s1 = Store(path)
    s2 = Store(path)  # e.g. a restart racing the old process' shutdown
    s1.add(A, "a")
    assert s2.load() == {A: {"a"}}
    s2.add(B, "b")
    assert s1.load() == {A: {"a"}, B: {"b"}}
    s1.close()
    s2.close()


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "bridge.sqlite3")
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)
