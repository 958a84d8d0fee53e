"""``[cluster]``: the Redis the XMPP bridge's replicas share (docs/scale.md). Settings only: the lease, the
store and the failover run against a real redis-server in tests/integration (test_bridge_lease.py,
test_bridge_failover.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ferryman.actors.errors import GatewayError
from ferryman.bridge_wiring import redis_client
from ferryman.config import ClusterSettings, SettingsError, render_settings
from ferryman.wiring import default_settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ferryman.toml"
    path.write_text("listener = []\n" + text, encoding="utf-8")
    return path


def issues(path: Path, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env=env or {})
    return [(issue.path, issue.message) for issue in caught.value.errors]


def test_no_cluster_by_default(tmp_path: Path) -> None:
    assert default_settings().cluster == ClusterSettings()
    assert not default_settings().cluster.enabled
    settings = load_settings(write(tmp_path, "[cluster]\nlease_ttl = 9\n"), env={})
    assert not settings.cluster.enabled and settings.cluster.lease_ttl == 9.0  # accepted, unused


def test_full_cluster_table(tmp_path: Path) -> None:
    text = """
[cluster]
redis = "rediss://redis.example:6380/2"
username = "ferryman"
password = "s3cret"
lease_ttl = 10
renew_interval = 2
key_prefix = "prod:"
"""
    cluster = load_settings(write(tmp_path, text), env={}).cluster
    assert cluster == ClusterSettings(
        "rediss://redis.example:6380/2", "ferryman", "s3cret", 10.0, 2.0, "prod:"
    )
    assert cluster.enabled and isinstance(cluster.lease_ttl, float)
    assert "s3cret" not in repr(cluster)
    rendered = render_settings(load_settings(write(tmp_path, text), env={}))
    assert "s3cret" not in rendered and 'redis = "rediss://redis.example:6380/2"' in rendered


def test_unix_socket_and_environment(tmp_path: Path) -> None:
    env = {"FERRYMAN_CLUSTER__REDIS": "unix:///run/redis/redis.sock?db=1", "FERRYMAN_CLUSTER__LEASE_TTL": "3"}
    cluster = load_settings(write(tmp_path, ""), env=env).cluster
    assert cluster.redis == "unix:///run/redis/redis.sock?db=1" and cluster.lease_ttl == 3.0


def test_every_cluster_mistake_at_once(tmp_path: Path) -> None:
    text = """
[cluster]
redis = "http://127.0.0.1:6379"
lease_ttl = 0.1
renew_interval = -1
key_prefix = "my prefix:"
"""
    assert issues(write(tmp_path, text)) == [
        (
            "cluster.redis",
            "'http://127.0.0.1:6379': expected redis://host:port/db, rediss://host:port/db or "
            "unix:///path/redis.sock",
        ),
        ("cluster.lease_ttl", "0.1 is out of range 0.5..3600.0"),
        ("cluster.renew_interval", "must be a finite number > 0, got -1"),
        ("cluster.key_prefix", "'my prefix:': no spaces or control characters"),
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://:pw@127.0.0.1:6379/0",
            "a password in the URL would be shown wherever settings are printed",
        ),
        ("redis://127.0.0.1:6379/zero", "the database 'zero' is not a number"),
        ("redis://127.0.0.1:http/0", "Port could not be cast to integer value"),
        ("redis:///0", "no host"),
        ("unix://", "no socket path"),
    ],
)
def test_bad_redis_urls(tmp_path: Path, url: str, message: str) -> None:
    [(where, problem)] = issues(write(tmp_path, f'[cluster]\nredis = "{url}"\n'))
    assert where == "cluster.redis" and message in problem


def test_renewals_must_fit_in_the_lease(tmp_path: Path) -> None:
    text = '[cluster]\nredis = "redis://127.0.0.1"\nlease_ttl = 5\nrenew_interval = 2\n'
    assert issues(write(tmp_path, text)) == [
        (
            "cluster.renew_interval",
            "2 s is more than a third of lease_ttl (5 s): the lease must outlast two failed renewals",
        )
    ]


def test_missing_redis_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed: `import redis` fails
    with pytest.raises(GatewayError, match=r"pip install 'ferryman\[cluster\]'"):
        redis_client(ClusterSettings(redis="redis://127.0.0.1:6379/0"))
