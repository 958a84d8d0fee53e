"""The pinned ranges of the libraries whose private API ferryman uses, and their start-up check
(ferryman/versions.py)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from loguru import logger

from ferryman import cli
from ferryman.versions import PINS, Pin, check, release, untested

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def fake_versions(
    monkeypatch: pytest.MonkeyPatch, **versions: str | None
) -> Callable[[str], str]:  # distribution (- as _) -> version; None: not installed; others: the real one
    real = importlib.metadata.version

    def version(name: str) -> str:
        key = name.replace("-", "_")
        if key in versions:
            found = versions[key]
            if found is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return found
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    return version


def test_the_pins_are_the_ones_in_pyproject() -> None:
    """One range, two places: pyproject.toml (what pip installs), versions.PINS (what start-up checks)."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pinned = {d.split(">=")[0].split("<")[0].split("=")[0].strip(): d for d in dependencies}
    for lib in PINS:
        assert pinned.get(lib.distribution) == lib.distribution + lib.spec
    assert [lib.distribution for lib in PINS] == ["gevent", "pykka", "paho-mqtt", "aiocoap"]


@pytest.mark.parametrize(
    ("text", "numbers", "pre"),
    [
        ("4.5.0", (4, 5, 0), False),
        ("2.2", (2, 2), False),
        ("2.3.0rc1", (2, 3, 0), True),
        ("4.6.0.dev3", (4, 6, 0), True),
        ("0.4.17.post1", (0, 4, 17), False),
        ("0.4.17+local.build", (0, 4, 17), False),
        ("v1.0b2", (1, 0), True),
        ("unknown", (), False),
    ],
)
def test_release_numbers(text: str, numbers: tuple[int, ...], pre: bool) -> None:
    assert release(text) == (numbers, pre)


@pytest.mark.parametrize(
    ("version", "admitted"),
    [
        ("4.5.0", True),
        ("4.5", True),
        ("4.5.3", True),
        ("4.5.3.post1", True),
        ("4.4.9", False),
        ("4.5.0rc1", False),  # before 4.5.0
        ("4.6.0", False),
        ("4.6.0rc1", False),  # the next series: not tested either
        ("5.0", False),
        ("3.9", False),
        ("garbage", False),
    ],
)
def test_the_range_is_lowest_inclusive_below_exclusive(version: str, admitted: bool) -> None:
    assert Pin("pykka", "4.5.0", "4.6", "-").admits(version) is admitted


def test_the_installed_set_is_read_from_the_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, pykka="4.5.0", paho_mqtt="2.2.0", aiocoap="0.4.17")
    assert untested() == []
    fake_versions(monkeypatch, pykka="4.5.2", paho_mqtt="2.2.1", aiocoap="0.4.17.post1")
    assert untested() == []


def test_a_version_outside_the_range_is_named_with_the_tested_range(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, pykka="5.0.0", paho_mqtt="2.2.0", aiocoap="0.4.17")
    [message] = untested()
    assert message.startswith(
        "pykka 5.0.0 is installed, but ferryman is tested with pykka >=4.5.0,<4.6 only: "
    )
    assert "actors/greenlet_actor.py" in message  # what depends on it
    assert message.endswith("pip install 'pykka>=4.5.0,<4.6'")


def test_every_library_out_of_range_or_missing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, pykka="4.1.0", paho_mqtt="3.0.0", aiocoap=None)
    problems = untested()
    assert len(problems) == 3
    assert problems[0].startswith("pykka 4.1.0 is installed, but ferryman is tested with pykka >=4.5.0,<4.6")
    assert problems[1].startswith(
        "paho-mqtt 3.0.0 is installed, but ferryman is tested with paho-mqtt >=2.2.0,<2.3"
    )
    assert "_out_messages" in problems[1]
    assert problems[2] == (
        "aiocoap is not installed: ferryman needs aiocoap>=0.4.17,<0.4.18 "
        "(pip install 'aiocoap>=0.4.17,<0.4.18')"
    )


def test_check_reports_each_problem_and_says_whether_to_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[str] = []
    fake_versions(monkeypatch, pykka="4.5.0", paho_mqtt="2.2.0", aiocoap="0.4.17")
    assert check(reported.append) is True
    assert reported == []
    fake_versions(monkeypatch, paho_mqtt="2.1.0")
    assert check(reported.append) is False
    assert len(reported) == 1 and reported[0].startswith("paho-mqtt 2.1.0 is installed")


def test_ferryman_check_fails_on_an_untested_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    fake_versions(monkeypatch, aiocoap="0.4.18")
    assert cli.main(["check"]) == 1
    out = capsys.readouterr()
    assert "aiocoap 0.4.18 is installed, but ferryman is tested with aiocoap >=0.4.17,<0.4.18 only" in out.err
    assert "ok:" not in out.out


def test_ferryman_run_refuses_to_start_on_an_untested_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    fake_versions(monkeypatch, pykka="4.6.0")
    built: list[object] = []
    monkeypatch.setattr("ferryman.wiring.build_gateway", lambda *a, **k: built.append(a))
    monkeypatch.setattr(cli, "configure_logging", lambda *a: None)  # keep this process's log sinks
    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(str(message)), level="ERROR", format="{message}")
    try:
        assert cli.main(["run"]) == 1
    finally:
        logger.remove(sink)
    assert built == []  # refused before anything was built, let alone started
    assert len(logged) == 1
    assert logged[0].startswith(
        "cannot start: pykka 4.6.0 is installed, but ferryman is tested with pykka >=4.5.0,<4.6 only"
    )
