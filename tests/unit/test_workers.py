"""Worker processes without servers: the ``[run] workers`` setting and ``--workers`` flag, where each listener
runs, the supervisor's restart backoff, and the SO_REUSEPORT sockets (bound on 127.0.0.1, nothing served)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ferryman.cli import main, worker_count
from ferryman.config import MAX_WORKERS, SettingsError, cpu_count, parse_workers
from ferryman.protocols.sockets import reserve_tcp_port, tcp_listener
from ferryman.wiring import listener_classes, load_settings
from ferryman.workers import Backoff, describe_exit, plan_workers, worker_settings


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "ferryman.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env=env or {})


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, text, env)
    return [(issue.path, issue.message) for issue in caught.value.errors]


# -- [run] workers -------------------------------------------------------------------------------------


def test_workers_default_to_one(tmp_path: Path) -> None:
    settings = load(tmp_path, '[log]\nlevel = "info"\n')
    assert settings.run.workers == 1
    assert settings.run.worker_count == 1


def test_workers_a_number_or_auto(tmp_path: Path) -> None:
    assert load(tmp_path, "[run]\nworkers = 3\n").run.worker_count == 3
    auto = load(tmp_path, '[run]\nworkers = "auto"\n').run
    assert auto.workers == "auto"
    assert auto.worker_count == cpu_count() >= 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "0 is out of range 1..256"),
        ("-2", "-2 is out of range 1..256"),
        (str(MAX_WORKERS + 1), f"{MAX_WORKERS + 1} is out of range 1..256"),
        ('"many"', "expected an integer or \"auto\", got a string ('many')"),
        ("1.5", 'expected an integer or "auto", got a number (1.5)'),
        ("true", 'expected an integer or "auto", got a boolean (true)'),
    ],
)
def test_bad_workers_are_settings_errors(tmp_path: Path, value: str, message: str) -> None:
    found = problems(tmp_path, f"[run]\nworkers = {value}\n")
    assert len(found) == 1
    assert found[0][0] == "run.workers"
    assert message in found[0][1]


def test_workers_from_the_environment(tmp_path: Path) -> None:
    text = "[run]\nworkers = 2\n"
    assert load(tmp_path, text, {"FERRYMAN_RUN__WORKERS": "auto"}).run.workers == "auto"
    assert load(tmp_path, text, {"FERRYMAN_RUN__WORKERS": "4"}).run.workers == 4
    found = problems(tmp_path, text, {"FERRYMAN_RUN__WORKERS": "lots"})
    assert found == [("env FERRYMAN_RUN__WORKERS", "expected an integer or \"auto\", got 'lots'")]
    found = problems(tmp_path, text, {"FERRYMAN_RUN__WORKERS": "0"})
    assert found[0][0] == "env FERRYMAN_RUN__WORKERS" and "out of range" in found[0][1]


def test_the_flag_overrides_the_file(tmp_path: Path) -> None:
    settings = load(tmp_path, "[run]\nworkers = 4\n")
    assert worker_count(None, settings) == 4
    assert worker_count(1, settings) == 1
    assert worker_count(2, settings) == 2
    assert worker_count("auto", settings) == cpu_count()


def test_parse_workers() -> None:
    assert parse_workers("auto") == "auto"
    assert parse_workers(" 8 ") == 8
    for bad in ("0", "x", "", "2.0", str(MAX_WORKERS + 1)):
        with pytest.raises(ValueError):
            parse_workers(bad)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_flag_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--workers", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--workers" in err and ("out of range" in err or "expected a number of worker processes" in err), (
        err
    )


# -- where each listener runs ----------------------------------------------------------------------------

PLACEMENT = """
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:1884"
target = "tcp://127.0.0.1:1883"
[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "127.0.0.1:8080"
target = "tcp://127.0.0.1:1883"
[[listener]]
name = "rest"
protocol = "http"
address = "127.0.0.1:8081"
target = "http://127.0.0.1:9000"
[[listener]]
name = "publish"
protocol = "http"
address = "127.0.0.1:8082"
target = "mqtt"
[[listener]]
name = "coap-proxy"
protocol = "coap"
address = "127.0.0.1:5683"
target = "coap://127.0.0.1:5700"
[[listener]]
name = "coap-publish"
protocol = "coap"
address = "127.0.0.1:5693"
target = "mqtt"
[[listener]]
name = "coaps"
protocol = "coap"
address = "127.0.0.1:5684"
target = "coap://127.0.0.1:5700"
[listener.psk]
sensor-1 = "0123456789abcdef"
[bridge.mqtt]
url = "tcp://127.0.0.1:1883"
"""


def test_listeners_in_every_worker_and_in_worker_0(tmp_path: Path) -> None:
    settings = load(tmp_path, PLACEMENT)
    classes = listener_classes()
    plan = plan_workers(settings, classes, 2)
    names = [ls.name for ls in settings.listeners]
    assert [names[i] for i in plan.spread] == ["mqtt", "ws", "rest", "coap-proxy"]
    assert [names[i] for i in plan.tcp] == ["mqtt", "ws", "rest"]  # the ports the supervisor holds
    zero = worker_settings(settings, classes, 0)
    one = worker_settings(settings, classes, 1)
    assert [ls.name for ls in zero.listeners] == names
    assert [ls.name for ls in one.listeners] == ["mqtt", "ws", "rest", "coap-proxy"]
    # the supervisor serves /metrics; workers keep the rest of the settings (auth, bridge) as they are
    assert zero.metrics.address == one.metrics.address == ""
    assert one.bridge == settings.bridge and one.auth == settings.auth


def test_a_plugin_without_a_say_runs_in_worker_0(tmp_path: Path) -> None:
    settings = load(tmp_path, PLACEMENT)

    class Plugin:  # a listener class that does not declare in_every_worker
        pass

    classes = {**listener_classes(), "mqtt": Plugin}
    assert [settings.listeners[i].name for i in plan_workers(settings, classes, 2).spread] == [
        "ws",
        "rest",
        "coap-proxy",
    ]


# -- restarts --------------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=30.0, stable_after=30.0)
    pauses = [backoff.after_exit(ran_for=1.0) for _ in range(10)]
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_backoff_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(base=0.5, cap=30.0, stable_after=30.0)
    for _ in range(5):
        backoff.after_exit(ran_for=0.2)
    assert backoff.after_exit(ran_for=29.9) == 16.0
    assert backoff.after_exit(ran_for=31.0) == 0.5  # it ran long enough: a new series
    assert backoff.after_exit(ran_for=0.1) == 1.0


def test_backoff_never_overflows() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    for _ in range(2000):
        pause = backoff.after_exit(ran_for=0.0)
    assert pause == 30.0


def test_exit_codes_as_logged() -> None:
    assert describe_exit(1) == "code 1"
    assert describe_exit(0) == "code 0"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(-15) == "signal SIGTERM"
    assert describe_exit(None) == "no exit code"


# -- SO_REUSEPORT sockets ----------------------------------------------------------------------------------


def test_reservation_and_worker_sockets_share_the_port() -> None:
    """The supervisor's reservation (bound, not listening) and two workers' listening sockets share one
    port; a program without SO_REUSEPORT cannot take it, even once the workers' sockets are closed."""
    held = reserve_tcp_port("127.0.0.1", 0)
    port = held.getsockname()[1]
    first = tcp_listener(("127.0.0.1", port), 16)
    second = tcp_listener(("127.0.0.1", port), 16)
    try:
        assert first.getsockname()[1] == second.getsockname()[1] == port
        first.close()
        second.close()
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        again = tcp_listener(("127.0.0.1", port), 16)  # a restarted worker binds it again
        again.close()
    finally:
        first.close()
        second.close()
        held.close()


def test_reservation_refuses_an_address_in_use() -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(OSError):
            reserve_tcp_port("127.0.0.1", plain.getsockname()[1])
