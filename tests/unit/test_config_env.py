"""ferryman.config: FERRYMAN_* environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryman.config import ListenerSettings, SettingsError, env_name
from ferryman.wiring import load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ferryman.toml"
    path.write_text(text, encoding="utf-8")
    return path


def issues(path: Path | None, env: dict[str, str]) -> list[tuple[str, str]]:
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env=env)
    return [(issue.path, issue.message) for issue in caught.value.errors]


NEW_LISTENER = {
    "FERRYMAN_LISTENER__1__NAME": "ws",
    "FERRYMAN_LISTENER__1__PROTOCOL": "mqtt-ws",
    "FERRYMAN_LISTENER__1__ADDRESS": "127.0.0.1:8080",
    "FERRYMAN_LISTENER__1__TARGET": "tcp://127.0.0.1:1883",
}


def test_scalar() -> None:
    settings = load_settings(None, env={"FERRYMAN_LOG__LEVEL": "debug", "FERRYMAN_METRICS__ADDRESS": ""})
    assert settings.log.level == "debug"
    assert settings.metrics.address == ""
    assert settings.source == "<defaults>"


def test_top_level_float_and_int() -> None:
    settings = load_settings(
        None,
        env={
            "FERRYMAN_SHUTDOWN_TIMEOUT": "2.5",
            "FERRYMAN_LISTENER__0__MAX_PACKET_SIZE": "4096",
            "FERRYMAN_LISTENER__0__CONNECT_TIMEOUT": "3",
        },
    )
    assert settings.shutdown_timeout == 2.5
    assert settings.listeners[0].max_packet_size == 4096
    assert settings.listeners[0].connect_timeout == 3.0


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[log]\nlevel = "error"\nformat = "json"\n')
    settings = load_settings(path, env={"FERRYMAN_LOG__LEVEL": "warning"})
    assert (settings.log.level, settings.log.format) == ("warning", "json")


def test_nested_table_is_created_and_enabled() -> None:
    settings = load_settings(
        None, env={"FERRYMAN_BRIDGE__XMPP__JID": "gw.localhost", "FERRYMAN_BRIDGE__XMPP__SECRET": "s3cret"}
    )
    assert settings.bridge.xmpp is not None
    assert (settings.bridge.xmpp.jid, settings.bridge.xmpp.secret) == ("gw.localhost", "s3cret")
    # the XMPP bridge needs its own broker session: [bridge.xmpp] implies [bridge.mqtt] with its defaults
    from ferryman.config import BridgeMqttSettings

    assert settings.bridge.mqtt == BridgeMqttSettings()


def test_nested_table_from_env_must_be_complete() -> None:
    assert issues(None, {"FERRYMAN_BRIDGE__XMPP__SECRET": "s"}) == [
        ("bridge.xmpp.jid", "missing: the gateway's JID is required")
    ]


def test_index() -> None:
    settings = load_settings(None, env={"FERRYMAN_LISTENER__0__ADDRESS": "0.0.0.0:1884"})
    assert settings.listeners[0].address == "0.0.0.0:1884"
    assert settings.listeners[0].name == "mqtt"


def test_index_into_the_file(tmp_path: Path) -> None:
    text = '[auth]\nhandler = "static"\n[[auth.users]]\nusername = "dev1"\npassword = "pw1"\n'
    settings = load_settings(write(tmp_path, text), env={"FERRYMAN_AUTH__USERS__0__PASSWORD": "rotated"})
    assert settings.auth.users[0].password == "rotated"


def test_append() -> None:
    settings = load_settings(None, env=NEW_LISTENER)
    assert settings.listeners[1] == ListenerSettings(
        name="ws", protocol="mqtt-ws", address="127.0.0.1:8080", target="tcp://127.0.0.1:1883"
    )


def test_append_in_index_order_whatever_the_variable_order() -> None:
    env = {key.replace("__1__", "__2__"): value for key, value in NEW_LISTENER.items()}
    env["FERRYMAN_LISTENER__2__ADDRESS"] = "127.0.0.1:8081"
    env["FERRYMAN_LISTENER__2__NAME"] = "ws2"
    env |= NEW_LISTENER
    assert [listener.name for listener in load_settings(None, env=env).listeners] == ["mqtt", "ws", "ws2"]


def test_appended_entry_must_be_complete() -> None:
    assert issues(None, {"FERRYMAN_LISTENER__1__NAME": "ws"}) == [
        ("listener[1].protocol", "missing (required)"),
        ("listener[1].address", "missing (required)"),
        ("listener[1].target", "missing (required)"),
    ]


def test_index_beyond_the_end() -> None:
    assert issues(None, {"FERRYMAN_LISTENER__2__NAME": "x"}) == [
        (
            "env FERRYMAN_LISTENER__2__NAME",
            "index 2 is beyond the end of listener (1 entry); 1 appends a new entry",
        )
    ]


def test_bool_and_typed_free_form_options(tmp_path: Path) -> None:
    text = (
        '[[handler]]\nname = "audit"\n'
        '[handler.options]\nstrict = true\nlimit = 3\nratio = 0.5\ntags = ["a"]\n'
    )
    path = write(tmp_path, text)
    for raw, expected in [
        ("no", False),
        ("0", False),
        ("FALSE", False),
        ("yes", True),
        ("1", True),
        ("true", True),
    ]:
        settings = load_settings(path, env={"FERRYMAN_HANDLER__0__OPTIONS__STRICT": raw})
        assert settings.handlers[0].options["strict"] is expected
    settings = load_settings(
        path,
        env={
            "FERRYMAN_HANDLER__0__OPTIONS__LIMIT": "7",
            "FERRYMAN_HANDLER__0__OPTIONS__RATIO": "0.25",
            "FERRYMAN_HANDLER__0__OPTIONS__TAGS": "b, c",
            "FERRYMAN_HANDLER__0__OPTIONS__NEW_KEY": "42",
        },
    )
    assert dict(settings.handlers[0].options) == {
        "strict": True,
        "limit": 7,
        "ratio": 0.25,
        "tags": ("b", "c"),
        "new_key": "42",
    }
    assert issues(path, {"FERRYMAN_HANDLER__0__OPTIONS__STRICT": "maybe"}) == [
        (
            "env FERRYMAN_HANDLER__0__OPTIONS__STRICT",
            "expected a boolean (true/false, 1/0, yes/no), got 'maybe'",
        )
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("dev1/#, public/#", ("dev1/#", "public/#")),
        ("dev1/#", ("dev1/#",)),
        ("", ()),
        ('["a,b", "c"]', ("a,b", "c")),
        ("[]", ()),
    ],
)
def test_list(raw: str, expected: tuple[str, ...]) -> None:
    env = {
        "FERRYMAN_AUTH__USERS__0__USERNAME": "dev1",
        "FERRYMAN_AUTH__USERS__0__PASSWORD": "pw",
        "FERRYMAN_AUTH__USERS__0__SUBSCRIBE": raw,
    }
    assert load_settings(None, env=env).auth.users[0].subscribe == expected


def test_bad_values() -> None:
    env = {
        "FERRYMAN_LISTENER__0__MAX_PACKET_SIZE": "big",
        "FERRYMAN_SHUTDOWN_TIMEOUT": "soon",
        "FERRYMAN_LISTENER__0__TLS__VERIFY": '["ocsp", 1]',
        "FERRYMAN_AUTH__USERS__0__SUBSCRIBE": "[unclosed",
        "FERRYMAN_LOG__FORMAT": "xml",
    }
    # Values that convert but break a rule are checked with the file (first); conversion errors follow.
    assert issues(None, env) == [
        ("env FERRYMAN_LOG__FORMAT", "'xml' is not one of text, json"),
        (
            "env FERRYMAN_AUTH__USERS__0__SUBSCRIBE",
            "not a TOML array: Invalid value",
        ),
        ("env FERRYMAN_LISTENER__0__MAX_PACKET_SIZE", "expected an integer, got 'big'"),
        ("env FERRYMAN_LISTENER__0__TLS__VERIFY", "expected an array of strings, got '[\"ocsp\", 1]'"),
        ("env FERRYMAN_SHUTDOWN_TIMEOUT", "expected a number, got 'soon'"),
    ]


def test_invalid_env_values_are_reported_with_the_variable(tmp_path: Path) -> None:
    text = '[[listener]]\nname = "a"\nprotocol = "mqtt"\naddress = "127.0.0.1:1884"\ntarget = "tcp://b"\n'
    env = {
        "FERRYMAN_LOG__LEVEL": "loud",
        "FERRYMAN_LISTENER__0__ADDRESS": "nowhere",
        "FERRYMAN_LISTENER__0__TLS__CERT_FILE": "missing.crt",
        "FERRYMAN_LISTENER__0__TLS__KEY_FILE": "",
        "FERRYMAN_AUTH__USERS__0__USERNAME": "u",
        "FERRYMAN_AUTH__USERS__0__PASSWORD": "p",
        "FERRYMAN_AUTH__USERS__0__PUBLISH": "ok/#,bad/#/x",
    }
    assert issues(write(tmp_path, text), env) == [
        ("env FERRYMAN_LOG__LEVEL", "'loud' is not one of debug, info, warning, error"),
        ("env FERRYMAN_LISTENER__0__ADDRESS", "'nowhere' is not host:port (the port is missing)"),
        ("env FERRYMAN_LISTENER__0__TLS__CERT_FILE", f"file not found: {Path.cwd() / 'missing.crt'}"),
        ("env FERRYMAN_LISTENER__0__TLS__KEY_FILE", "must not be empty"),
        ("env FERRYMAN_AUTH__USERS__0__PUBLISH", "'bad/#/x': '#' must be a whole level and the last one"),
    ]


def test_relative_tls_paths_from_env_are_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("s.crt", "s.key"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    env = {"FERRYMAN_LISTENER__0__TLS__CERT_FILE": "s.crt", "FERRYMAN_LISTENER__0__TLS__KEY_FILE": "s.key"}
    tls = load_settings(None, env=env).listeners[0].tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file) == (str(tmp_path / "s.crt"), str(tmp_path / "s.key"))


def test_unknown_keys_are_errors() -> None:
    env = {
        "FERRYMAN_LOG__LEVL": "debug",
        "FERRYMAN_LISTENER__0__ADRESS": "0.0.0.0:1",
        "FERRYMAN_NOPE": "1",
        "FERRYMAN_LOG": "debug",
        "FERRYMAN_LISTENER__ADDRESS": "x",
        "FERRYMAN_LOG__LEVEL__X": "1",
        "FERRYMAN_LOG____LEVEL": "1",
    }
    assert issues(None, env) == [
        (
            "env FERRYMAN_LISTENER__0__ADRESS",
            "unknown key 'adress' in listener[0] (did you mean FERRYMAN_LISTENER__0__ADDRESS?)",
        ),
        (
            "env FERRYMAN_LISTENER__ADDRESS",
            "listener is an array of tables: give an index, e.g. FERRYMAN_LISTENER__0__ADDRESS",
        ),
        ("env FERRYMAN_LOG", "log is a table: set one of its keys, e.g. FERRYMAN_LOG__LEVEL"),
        (
            "env FERRYMAN_LOG____LEVEL",
            "malformed name: parts are separated by a double underscore, e.g. FERRYMAN_LOG__LEVEL",
        ),
        ("env FERRYMAN_LOG__LEVEL__X", "log.level is a string, not a table"),
        ("env FERRYMAN_LOG__LEVL", "unknown key 'levl' in log (did you mean FERRYMAN_LOG__LEVEL?)"),
        (
            "env FERRYMAN_NOPE",
            "unknown key 'nope'; known keys: shutdown_timeout, log, metrics, run, listener, auth, handler, "
            "bridge, cluster",
        ),
    ]


def test_reserved_and_foreign_variables_are_ignored() -> None:
    env = {
        "FERRYMAN_CONFIG": "/etc/ferryman.toml",
        "PATH": "/bin",
        "ferryman_log__level": "x",
        "FERRYMANX": "1",
    }
    assert load_settings(None, env=env) == load_settings(None, env={})


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRYMAN_LOG__FORMAT", "json")
    assert load_settings().log.format == "json"


def test_env_cannot_apply_where_the_file_has_the_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, 'log = "debug"\n')
    assert issues(path, {"FERRYMAN_LOG__LEVEL": "info"}) == [
        ("log", "expected a table ([log]), got a string ('debug')"),
        (
            "env FERRYMAN_LOG__LEVEL",
            "cannot apply: log in the settings file is not a table but a string ('debug')",
        ),
    ]


def test_env_name() -> None:
    assert env_name(("listener", 0, "tls", "cert_file")) == "FERRYMAN_LISTENER__0__TLS__CERT_FILE"
