"""Integration tests run against real servers: they refuse to start when one is missing (never skip)."""

import shutil

import pytest

SERVERS = ("mosquitto", "mosquitto_pub", "mosquitto_sub", "prosody", "prosodyctl", "haproxy", "redis-server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Loaded only when tests/integration is collected, so `pytest tests/unit` needs none of these."""
    for tool in SERVERS:
        if shutil.which(tool) is None:
            pytest.exit(
                f"{tool} is not installed: run `make test` (scripts/setup.sh installs it); "
                "`make unit` runs the unit tests, which need no servers",
                returncode=pytest.ExitCode.USAGE_ERROR,
            )
