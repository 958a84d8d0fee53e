"""The example listener plug-in (examples/listener-plugin): installed with pip into a directory of its own,
found through the `ferryman.listeners` entry point, its own settings keys checked by `ferryman check`, and
its listener started by `ferryman run` and spoken to over a real socket. Nothing in ferryman names it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import GatewayProcess

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "listener-plugin"

CONFIG = """
[metrics]
address = ""
[[listener]]
name = "echo"
protocol = "echo"
address = "127.0.0.1:{port}"
greeting = "welcome to echo"
max_line = 16
token = "s3cret-token"
max_connections = 10
"""

BAD = """
[metrics]
address = ""
[[listener]]
name = "echo"
protocol = "echo"
address = "127.0.0.1:7007"
target = "tcp://127.0.0.1:1883"
greting = "typo"
max_line = "many"
bypass = ["/x"]
[[listener]]
name = "echo2"
protocol = "echo"
address = "127.0.0.1:7008"
greeting = "longer than max_line"
max_line = 5
"""


def _install(site: Path, work: Path) -> None:
    """``pip install --target`` of a copy of the example (the source tree stays clean), built with the
    test environment's own setuptools (``--no-build-isolation``: no package index needed)."""
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip, "--target", str(site), str(source)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a ferryman process that has the plug-in installed."""
    work = tmp_path_factory.mktemp("listener-plugin")
    site = work / "site"
    _install(site, work)
    assert (site / "ferryman_echo_listener").is_dir()
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    yield {"PYTHONPATH": path}


def check(
    tmp_path: Path, text: str, env: dict[str, str] | None, *args: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "ferryman.toml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "ferryman", "check", "--config", str(path), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
        cwd=tmp_path,
        timeout=120,
    )


def test_check_validates_the_plugins_keys(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    done = check(tmp_path, CONFIG.format(port=7007), plugin_env, "--print")
    assert done.returncode == 0, done.stderr
    assert 'greeting = "welcome to echo"' in done.stdout and "max_line = 16" in done.stdout
    assert 'token = "****"' in done.stdout and "s3cret-token" not in done.stdout  # a secret of its kind
    assert "ok: " in done.stdout


def test_check_reports_every_bad_plugin_key(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    done = check(tmp_path, BAD, plugin_env)
    assert done.returncode == 1
    source = tmp_path / "ferryman.toml"
    errors = [
        line.removeprefix(f"{source}: ") for line in done.stderr.splitlines() if line.startswith(str(source))
    ]
    assert errors == [
        "listener[0].greting: unknown key 'greting' (did you mean 'greeting'?)",
        "listener[0].target: echo listeners take no target",
        "listener[0].bypass: only http listeners have a bypass list",
        "listener[0].max_line: expected an integer, got a string ('many')",
        "listener[1].greeting: is longer than max_line (5 bytes)",
    ]
    assert done.stderr.rstrip().endswith("5 error(s)")


def test_without_the_plugin_the_protocol_is_unknown(tmp_path: Path) -> None:
    done = check(tmp_path, CONFIG.format(port=7007), None)
    assert done.returncode == 1
    assert "listener[0].protocol: 'echo' is not one of mqtt, mqtt-ws, http, coap" in done.stderr


def _lines(sock: socket.socket) -> Iterator[bytes]:
    reader = sock.makefile("rb")
    while True:
        line = reader.readline()
        if not line:
            return
        yield line


def test_run_starts_the_plugins_listener(
    gateway_factory: object, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    gw: GatewayProcess = gateway_factory(CONFIG, env=plugin_env)  # type: ignore[operator]
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        lines = _lines(sock)
        assert next(lines) == b"welcome to echo\n"
        sock.sendall(b"s3cret-token\nhello\r\nworld\n")
        assert [next(lines) for _ in range(3)] == [b"OK\n", b"hello\n", b"world\n"]
        sock.sendall(b"x" * 17 + b"\n")  # one byte over max_line
        assert next(lines) == b"ERR line too long\n"
        assert list(lines) == []  # and the listener closed the connection
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        lines = _lines(sock)
        assert next(lines) == b"welcome to echo\n"
        sock.sendall(b"guess\n")
        assert list(lines) == [b"ERR bad token\n"]
    assert "listener 'echo': echo on 127.0.0.1:" in gw.stderr()


def _wait_for(gw: GatewayProcess, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 20
    while gw.stderr().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{gw.stderr()}"
        time.sleep(0.05)


def test_sighup_checks_the_plugins_keys_too(gateway_factory: object, plugin_env: dict[str, str]) -> None:
    gw: GatewayProcess = gateway_factory(CONFIG, env=plugin_env)  # type: ignore[operator]
    gw.rewrite_config(CONFIG.replace("max_line = 16", 'max_line = "many"'))
    gw.send_signal(signal.SIGHUP)
    _wait_for(gw, "SIGHUP: settings not reloaded")
    assert "listener[0].max_line: expected an integer, got a string ('many')" in gw.stderr()
    gw.rewrite_config(CONFIG.replace("max_line = 16", "max_line = 32"))
    gw.send_signal(signal.SIGHUP)
    _wait_for(gw, "settings reloaded from")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        assert next(_lines(sock)) == b"welcome to echo\n"  # the listener keeps running as it is
