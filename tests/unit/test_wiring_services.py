"""Wiring by construction: the Gateway hands each listener its collaborators (``ListenerServices``) through
the constructor; a publish-mode listener without the bridge's port refuses to start with a clear message;
a listener plug-in written for ``start(settings, chain, metrics)`` still starts. No servers: nothing is
dialled, the listeners bind free loopback ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pykka
import pytest

from ferryman.actors.contracts import Refusal
from ferryman.actors.gateway import Built, Gateway, GatewayError, ListenerServices
from ferryman.actors.handler import HandlerChain
from ferryman.actors.metrics import Metrics
from ferryman.wiring import HANDLERS, LISTENERS, load_settings
from tests.servers import free_port

NEEDS_BRIDGE = 'publish mode (target = "mqtt") needs the bridge\'s MQTT session: add a [bridge.mqtt] table'


def _settings(tmp_path: Path, protocol: str, target: str) -> Any:
    cfg = tmp_path / "wiring.toml"
    cfg.write_text(
        f"""
[metrics]
address = ""
[[listener]]
name = "pub"
protocol = "{protocol}"
address = "127.0.0.1:{free_port()}"
target = "{target}"
[auth]
handler = "allow-all"
[bridge.mqtt]
url = "tcp://127.0.0.1:{free_port()}"
"""
    )
    return load_settings(cfg)


class _Listener(pykka.ThreadingActor):
    """The least a listener plug-in needs for the Gateway's start and stop."""

    seen: ClassVar[list[Any]] = []

    @classmethod
    def validate_settings(cls, settings: Any) -> list[str]:
        return []

    def bound_address(self) -> tuple[str, int]:
        return ("127.0.0.1", 0)

    def stop_accepting(self) -> None:
        pass

    def close_all(self, refusal: Refusal, drain: float = 0.0) -> int:
        return 0


class ThreeArgs(_Listener):
    def __init__(self, settings: Any, chain: HandlerChain, metrics: Metrics) -> None:
        super().__init__()
        self.seen.append(("three", settings.name))


class FourArgs(_Listener):
    def __init__(
        self, settings: Any, chain: HandlerChain, metrics: Metrics, services: ListenerServices
    ) -> None:
        super().__init__()
        self.seen.append(("four", services))


@pytest.mark.parametrize(("protocol", "target"), [("http", "mqtt"), ("coap", "mqtt")])
def test_publish_mode_without_the_bridge_port_refuses_to_start(
    tmp_path: Path, protocol: str, target: str
) -> None:
    # The settings have [bridge.mqtt], but no component offers the port: the listener is told so.
    gw = Gateway(_settings(tmp_path, protocol, target), LISTENERS, HANDLERS)
    with pytest.raises(GatewayError) as raised:
        gw.start()
    assert NEEDS_BRIDGE in str(raised.value)
    assert "'pub'" in str(raised.value)
    assert not gw.listeners


def test_listeners_get_the_router_and_the_ports_a_component_offers(tmp_path: Path) -> None:
    port = object()
    _Listener.seen.clear()
    gw = Gateway(
        _settings(tmp_path, "http", "mqtt"),
        {"http": FourArgs},
        HANDLERS,
        components=[lambda g: Built([], {"http.publish": port})],
    )
    gw.start()
    try:
        [(kind, services)] = _Listener.seen
        assert kind == "four"
        assert services.router is gw.router
        assert services.publish_port("http.publish", "pub") is port
    finally:
        gw.stop()


def test_a_listener_plugin_with_three_arguments_still_starts(tmp_path: Path) -> None:
    _Listener.seen.clear()
    settings = _settings(tmp_path, "http", "mqtt")
    gw = Gateway(settings, {"http": ThreeArgs}, HANDLERS, components=[lambda g: []])
    gw.start()
    try:
        assert _Listener.seen == [("three", "pub")]
        assert gw.listeners["pub"].is_alive()
    finally:
        gw.stop()
