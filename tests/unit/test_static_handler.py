"""The ``static`` handler's password check, in-process (no servers): an unknown user costs the same
PBKDF2 work as a known user with a wrong password, so response times do not tell who exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ferryman.actors.contracts import Grant, Refusal, Session
from ferryman.bridge import static
from ferryman.bridge.passwords import hash_password
from ferryman.wiring import load_settings


def settings(tmp_path: Path, users: str) -> Any:
    path = tmp_path / "f.toml"
    path.write_text('[auth]\nhandler = "static"\n' + users)
    return load_settings(path, env={})


def session(username: str, password: bytes) -> Session:
    return Session(1, "l", "mqtt", ("127.0.0.1", 1), 4, "c1", username, password)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The iteration counts of every PBKDF2 verification the handler runs (the real function runs)."""
    seen: list[int] = []
    real = static.verify_password

    def spy(password: bytes, encoded: str) -> bool:
        seen.append(int(encoded.split("$")[1]))
        return real(password, encoded)

    monkeypatch.setattr(static, "verify_password", spy)
    return seen


def test_unknown_user_costs_as_much_as_a_known_one(tmp_path: Path, hashes: list[int]) -> None:
    handler = static.StaticHandler(
        settings=settings(
            tmp_path,
            f'[[auth.users]]\nusername = "dev1"\npassword_hash = "{hash_password("pw1", 3000)}"\n'
            f'[[auth.users]]\nusername = "dev2"\npassword_hash = "{hash_password("pw2", 5000)}"\n',
        )
    )
    assert isinstance(handler._check(session("dev1", b"pw1")), Grant)
    assert isinstance(handler._check(session("dev1", b"wrong")), Refusal)
    assert isinstance(handler._check(session("nobody", b"wrong")), Refusal)
    assert hashes == [3000, 3000, 5000]  # the unknown user ran the costliest of the users' hashes


def test_plain_passwords_need_no_decoy(tmp_path: Path, hashes: list[int]) -> None:
    handler = static.StaticHandler(
        settings=settings(tmp_path, '[[auth.users]]\nusername = "dev1"\npassword = "pw1"\n')
    )
    assert isinstance(handler._check(session("nobody", b"pw1")), Refusal)
    assert isinstance(handler._check(session("dev1", b"pw1")), Grant)
    assert hashes == []


def test_verified_passwords_remember_successes_only_and_stay_bounded() -> None:
    from ferryman.bridge.passwords import VerifiedPasswords, hash_password, verify_password

    calls: list[bytes] = []

    def slow(password: bytes, encoded: str) -> bool:
        calls.append(password)
        return verify_password(password, encoded)

    cache = VerifiedPasswords(slow, size=2)
    h = hash_password("right", 1000)
    assert cache.verify(b"right", h) and cache.verify(b"right", h)
    assert calls == [b"right"]  # the second check hit the cache
    assert not cache.verify(b"wrong", h) and not cache.verify(b"wrong", h)
    assert calls == [b"right", b"wrong", b"wrong"]  # failures are never remembered
    other = hash_password("right", 1000)  # a new hash of the same password (a reload): checked again
    assert cache.verify(b"right", other)
    assert calls[-1] == b"right" and len(calls) == 4
    for i in range(3):  # more than size entries: the oldest go
        assert cache.verify(f"p{i}".encode(), hash_password(f"p{i}", 1000))
    n = len(calls)
    assert cache.verify(b"right", h)
    assert len(calls) == n + 1


def test_a_reconnecting_device_pays_pbkdf2_once(tmp_path: Path, hashes: list[int]) -> None:
    handler = static.StaticHandler(
        settings=settings(
            tmp_path, f'[[auth.users]]\nusername = "dev1"\npassword_hash = "{hash_password("pw1", 3000)}"\n'
        )
    )
    for _ in range(3):
        assert isinstance(handler.auth_connect(session("dev1", b"pw1")), Grant)
    assert isinstance(handler.auth_connect(session("dev1", b"wrong")), Refusal)
    assert hashes == [3000, 3000]  # one check for three connects, and the wrong password's own
    assert static.StaticHandler.inline_connect  # the chain calls it in the session's greenlet
