"""ferryman.config: rendering the effective settings, secrets masked everywhere."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from ferryman.config import (
    EXAMPLE_FILE,
    BridgeMqttSettings,
    BridgeXmppSettings,
    FrozenMap,
    HandlerSettings,
    Settings,
    UserSettings,
    mask_secrets,
    render_settings,
    settings_to_dict,
)
from ferryman.config.toml_writer import dumps
from ferryman.wiring import default_settings, load_settings

SECRETS = """
[[listener]]
name = "mqtts"
protocol = "mqtt"
address = "127.0.0.1:8884"
target = "tls://broker.example"
[listener.tls]
cert_file = "s.crt"
key_file = "s.key"

[auth]
handler = "static"
[auth.options]
signing_key = "auth-signing-key"
[[auth.users]]
username = "dev1"
password = "user-password-1"
[[auth.users]]
username = "dev2"
password_hash = "user-hash-2"

[[handler]]
name = "callout"
[handler.options]
url = "https://hooks.example"
api_token = "handler-token"
Client_Secret = "handler-secret"
db_password = "handler-db-password"
apiKey = "handler-api-key"
nested = { private_key = "nested-key", plain = "visible" }
retries = 3
when = 1979-05-27T07:32:00Z
"quoted key" = "needs quotes"

[bridge.mqtt]
username = "bridge"
password = "bridge-password"

[bridge.xmpp]
jid = "gw.localhost"
secret = "xmpp-secret"
"""

SECRET_VALUES = (
    "auth-signing-key",
    "user-password-1",
    "user-hash-2",
    "handler-token",
    "handler-secret",
    "handler-db-password",
    "handler-api-key",
    "nested-key",
    "bridge-password",
    "xmpp-secret",
)


def load_secrets(tmp_path: Path) -> Settings:
    for name in ("s.crt", "s.key"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    path = tmp_path / "ferryman.toml"
    path.write_text(SECRETS, encoding="utf-8")
    return load_settings(path, env={})


def test_render_masks_every_secret(tmp_path: Path) -> None:
    settings = load_secrets(tmp_path)
    text = render_settings(settings)
    for secret in SECRET_VALUES:
        assert secret not in text
    assert text.startswith(f"# ferryman effective settings (source: {tmp_path / 'ferryman.toml'})")
    rendered = tomllib.loads(text)
    assert rendered["auth"]["users"][0]["password"] == "****"
    assert rendered["auth"]["users"][0]["password_hash"] == ""
    assert rendered["auth"]["users"][1]["password"] == ""
    assert rendered["auth"]["users"][1]["password_hash"] == "****"
    assert rendered["auth"]["options"] == {"signing_key": "****"}
    assert rendered["bridge"]["mqtt"]["password"] == "****"
    assert rendered["bridge"]["mqtt"]["username"] == "bridge"
    assert rendered["bridge"]["xmpp"]["secret"] == "****"
    options = rendered["handler"][0]["options"]
    assert options["api_token"] == options["Client_Secret"] == options["db_password"] == "****"
    assert options["apiKey"] == "****"
    assert options["nested"] == {"private_key": "****", "plain": "visible"}
    assert (options["url"], options["retries"]) == ("https://hooks.example", 3)
    # a path, not a secret
    assert rendered["listener"][0]["tls"]["key_file"] == str(tmp_path / "s.key")


def test_repr_and_str_mask_secrets(tmp_path: Path) -> None:
    settings = load_secrets(tmp_path)
    for text in (repr(settings), str(settings)):
        for secret in SECRET_VALUES:
            assert secret not in text
    assert repr(UserSettings("dev1", password="pw1", publish=("a",))) == (
        "UserSettings(username='dev1', password='****', password_hash='', publish=('a',), subscribe=(), "
        "identity='')"
    )
    assert "'****'" in repr(BridgeMqttSettings(password="p"))
    assert "s3cret" not in repr(BridgeXmppSettings(secret="s3cret"))
    assert (
        repr(HandlerSettings("h", {"token": "t", "n": 1}))
        == "HandlerSettings(name='h', options={'token': '****', 'n': 1})"
    )


def test_settings_to_dict(tmp_path: Path) -> None:
    settings = load_secrets(tmp_path)
    masked = settings_to_dict(settings)
    plain = settings_to_dict(settings, mask=False)
    assert masked["bridge"]["xmpp"]["secret"] == "****"
    assert plain["bridge"]["xmpp"]["secret"] == "xmpp-secret"
    assert plain["handler"][0]["options"]["nested"] == {"private_key": "nested-key", "plain": "visible"}
    assert "source" not in plain
    assert settings_to_dict(default_settings()) == {
        "log": {"level": "info", "format": "text"},
        "metrics": {"address": "127.0.0.1:9100"},
        "run": {"workers": 1},
        "listener": [
            {
                "name": "mqtt",
                "protocol": "mqtt",
                "address": "127.0.0.1:1884",
                "target": "tcp://127.0.0.1:1883",
                "path_prefix": "",
                "allowed_origins": [],
                "bypass": [],
                "publish_qos": 1,
                "max_packet_size": 1048576,
                "connect_timeout": 10.0,
                "refused_publish_v3": "ack",
                "keepalive_factor": 1.5,
                "max_connections": 100_000,
                "max_connections_per_ip": 0,
                "publish_rate": 0.0,
                "publish_burst": 0.0,
                "publish_bytes_rate": 0.0,
                "rate_limit_action": "throttle",
                "socket_buffer": 0,
                "flood_batch_wait": 0.005,
                "max_user_properties": 64,
                "max_topic_filters": 128,
                "header_timeout": 10.0,
                "body_timeout": 60.0,
                "idle_timeout": 60.0,
                "forward_authorization": False,
                "max_observations": 4096,
                "max_observations_per_peer": 64,
                "observe_check_interval": 120.0,
                "proxy_protocol": False,
                "trusted_proxies": [],
                "target_proxy_protocol": 0,
                "park_idle_after": 5.0,
            }
        ],
        "auth": {"handler": "allow-all", "client_id_binding": "identity"},
        "cluster": {
            "redis": "",
            "username": "",
            "password": "",
            "lease_ttl": 5.0,
            "renew_interval": 1.0,
            "key_prefix": "ferryman:",
        },
        "shutdown_timeout": 5.0,
    }


def test_unmasked_dict_round_trips_through_toml(tmp_path: Path) -> None:
    again = tmp_path / "again.toml"
    for original in (load_secrets(tmp_path), load_settings(EXAMPLE_FILE, env={}), default_settings()):
        again.write_text(dumps(settings_to_dict(original, mask=False)), encoding="utf-8")
        assert load_settings(again, env={}) == dataclasses.replace(original, source=str(again))


def test_rendered_defaults_load_back(tmp_path: Path) -> None:
    path = tmp_path / "rendered.toml"
    path.write_text(render_settings(default_settings()), encoding="utf-8")
    assert load_settings(path, env={}).listeners == default_settings().listeners


def test_no_listeners_render_as_an_empty_array(tmp_path: Path) -> None:
    path = tmp_path / "none.toml"
    path.write_text("listener = []\n", encoding="utf-8")
    text = render_settings(load_settings(path, env={}))
    assert "listener = []" in text
    path.write_text(text, encoding="utf-8")
    assert load_settings(path, env={}).listeners == ()


def test_mask_secrets() -> None:
    source = {
        "password": "p",
        "AUTH_TOKEN": "t",
        "empty_secret": "",
        "keys": {"a": 1},
        "list": [{"apikey": "k", "x": 1}, 2],
        "plain": {"user": "u"},
    }
    assert mask_secrets(source) == {
        "password": "****",
        "AUTH_TOKEN": "****",
        "empty_secret": "",
        "keys": "****",
        "list": [{"apikey": "****", "x": 1}, 2],
        "plain": {"user": "u"},
    }
    assert source["password"] == "p"  # a copy
    assert mask_secrets(FrozenMap({"secret": "s"})) == {"secret": "****"}


def test_toml_writer_escapes() -> None:
    data = {"s": 'quote " back \\ nl \n tab \t del \x7f', "f": float("inf"), "b": False, "e": [], "t": {}}
    assert tomllib.loads(dumps(data)) == data
