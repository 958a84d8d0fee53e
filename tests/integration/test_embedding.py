"""ferryman embedded in a user's program: the runnable example (examples/embedding/embed.py) as a subprocess
against a real mosquitto, and ``build_gateway(settings, handlers=[ref])`` in process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ferryman import GatewayError, Grant, HandlerActor, Session, build_gateway
from ferryman.config import AuthSettings, ListenerSettings, MetricsSettings, Settings
from tests.servers import Mosquitto, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "embedding" / "embed.py"
CLIENT = ["-h", "127.0.0.1", "-V", "mqttv5", "-q", "1"]


def _pub(port: int, topic: str, payload: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "mosquitto_pub",
            *CLIENT,
            "-p",
            str(port),
            "-i",
            f"p-{uuid.uuid4().hex[:8]}",
            "-t",
            topic,
            "-m",
            payload,
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )


def _sub(broker: Mosquitto, filters: list[str], count: int) -> subprocess.Popen[str]:
    """mosquitto_sub on the broker itself (not through the gateway): the first ``count`` messages, as
    `topic payload` lines."""
    topics = [arg for f in filters for arg in ("-t", f)]
    proc = subprocess.Popen(
        ["mosquitto_sub", *CLIENT, "-p", str(broker.port), "-v", "-C", str(count), "-W", "20", *topics],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # let it subscribe before anything is published
    return proc


def test_the_embedding_example_runs_filters_and_stops_on_sigterm(broker: Mosquitto) -> None:
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", str(port), "--broker", f"127.0.0.1:{broker.port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    try:
        wait_port(port, timeout=15, proc=proc)  # type: ignore[arg-type]
        # One subscriber on the broker for both topics; it stops after 4 messages: the three allowed ones and
        # an end marker published after the refused one. Had the refused one got through, it would be among
        # the four, in place of the marker.
        sub = _sub(broker, [f"embedded/{tag}/#", f"{tag}/#"], 4)
        try:
            for i in range(3):
                ok = _pub(port, f"embedded/{tag}/t", f"m{i}")
                assert ok.returncode == 0, ok.stderr
            refused = _pub(port, f"{tag}/outside", "no")
            assert "not authorized" in refused.stderr.lower(), (refused.returncode, refused.stderr)
            assert _pub(port, f"embedded/{tag}/end", "end").returncode == 0
            received = sub.communicate(timeout=15)[0]
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.communicate()
        expected = [f"embedded/{tag}/t m{i}" for i in range(3)] + [f"embedded/{tag}/end end"]
        assert received.splitlines() == expected

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "published: 4" in out.splitlines(), (out, err)


class Counter(HandlerActor):
    def on_start(self) -> None:
        self.topics: list[str] = []

    def auth_connect(self, session: Session) -> Grant:
        return Grant(publish=["embedded/#"], subscribe=["embedded/#"])

    def on_publish(self, session: Session, topic: str, payload: bytes) -> None:
        self.topics.append(topic)

    def seen(self) -> list[str]:
        return list(self.topics)


def _settings(port: int, broker: Mosquitto) -> Settings:
    return Settings(
        metrics=MetricsSettings(address=""),
        listeners=(
            ListenerSettings(
                name="mqtt",
                protocol="mqtt",
                address=f"127.0.0.1:{port}",
                target=f"tcp://127.0.0.1:{broker.port}",
            ),
        ),
        auth=AuthSettings(handler="allow-all"),
    )


def test_build_gateway_takes_a_started_handler_and_leaves_it_running(broker: Mosquitto) -> None:
    port = free_port()
    settings = _settings(port, broker)
    counter = Counter.start(settings=settings)
    gateway = build_gateway(settings, handlers=[counter])
    try:
        gateway.start()
        assert gateway.health()["handlers"] == ["AllowAllHandler", "Counter"]
        assert _pub(port, "embedded/in-process", "x").returncode == 0
        assert "not authorized" in _pub(port, "outside/in-process", "x").stderr.lower()
        gateway.stop()
        assert counter.is_alive()  # the Gateway stops only what it started
        assert counter.proxy().seen().get(timeout=5) == ["embedded/in-process"]
    finally:
        gateway.stop()
        counter.stop()


def test_build_gateway_refuses_what_is_not_a_running_handler(broker: Mosquitto) -> None:
    settings = _settings(free_port(), broker)
    stopped = Counter.start(settings=settings)
    stopped.stop()
    for bad in ([object()], [stopped]):
        gateway = build_gateway(settings, handlers=bad)  # type: ignore[arg-type]
        with pytest.raises(GatewayError, match="handlers="):
            gateway.start()
