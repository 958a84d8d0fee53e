"""ferryman.config: defaults, the example file, file validation (every problem, with its path)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ferryman.config import (
    EXAMPLE_FILE,
    AuthSettings,
    BridgeSettings,
    ListenerOptions,
    ListenerSettings,
    LogSettings,
    MetricsSettings,
    SettingIssue,
    Settings,
    SettingsError,
    Target,
    TlsSettings,
    UserSettings,
    parse_address,
    parse_target,
)
from ferryman.config.keys import ROOT, Kind, Table, TableArray
from ferryman.wiring import default_settings, load_settings


def write(tmp_path: Path, text: str, name: str = "ferryman.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def issues(path: Path | None, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(path, message) of every problem loading ``path``; fails when it loads."""
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env=env or {})
    return [(issue.path, issue.message) for issue in caught.value.errors]


def paths(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    return [where for where, _ in issues(path, env)]


LISTENER = """
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:1884"
target = "tcp://127.0.0.1:1883"
"""

DEFAULT_LISTENER = ListenerSettings(
    name="mqtt",
    protocol="mqtt",
    address="127.0.0.1:1884",
    target="tcp://127.0.0.1:1883",
    options=ListenerOptions({"park_idle_after": 5.0}),  # the mqtt kind's own key, at its default
)


# --- defaults and the example -------------------------------------------------------------------------


def test_defaults() -> None:
    settings = default_settings()
    assert settings == Settings(
        log=LogSettings(level="info", format="text"),
        metrics=MetricsSettings(address="127.0.0.1:9100"),
        listeners=(DEFAULT_LISTENER,),
        auth=AuthSettings(handler="allow-all", users=()),
        handlers=(),
        bridge=BridgeSettings(mqtt=None, xmpp=None),
        shutdown_timeout=5.0,
        source="<defaults>",
    )
    assert load_settings(None, env={}) == settings
    listener = settings.listeners[0]
    assert (listener.host, listener.port) == ("127.0.0.1", 1884)
    assert listener.parsed_target == Target("tcp", "127.0.0.1", 1883, "")
    assert listener.tls is None
    assert (listener.max_packet_size, listener.connect_timeout, listener.refused_publish_v3) == (
        1048576,
        10.0,
        "ack",
    )


def test_settings_are_frozen_and_hashable() -> None:
    settings = default_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, "log", LogSettings())  # noqa: B010
    assert isinstance(settings.listeners, tuple)
    assert hash(settings) == hash(default_settings())


def test_example_file_loads_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(EXAMPLE_FILE, env={})
    assert settings.source == str(EXAMPLE_FILE)
    assert settings.listeners == (DEFAULT_LISTENER,)
    assert settings.auth.handler == "static"
    dev1, sensor = settings.auth.users
    assert dev1 == UserSettings("dev1", "pw1", "", ("dev1/#",), ("dev1/#", "public/#"), identity="client")
    assert "%u" in sensor.publish[0]
    assert settings.bridge.mqtt is not None and settings.bridge.mqtt.client_id == "ferryman-bridge"
    assert settings.bridge.xmpp is not None and settings.bridge.xmpp.allowed_jids == ("alice@localhost",)


def _all_keys(table: Table) -> set[str]:
    keys: set[str] = set()
    for key, node in table.keys.items():
        keys.add(key)
        if isinstance(node, Table):
            keys |= _all_keys(node)
        elif isinstance(node, TableArray):
            keys |= _all_keys(node.item)
    return keys


def test_example_file_mentions_every_key() -> None:
    text = EXAMPLE_FILE.read_text(encoding="utf-8")
    written = set(re.findall(r"^#? ?([a-z_0-9]+) =", text, re.MULTILINE))
    headers = set(re.findall(r"^#? ?\[\[?([a-z_.]+)\]\]?", text, re.MULTILINE))
    mentioned = written | {part for header in headers for part in header.split(".")}
    assert _all_keys(ROOT) - mentioned - {"options"} == set()
    assert "[listener.tls]" in text and "\n# [listener.tls]" in text  # present but commented out


def test_every_typed_key_is_in_the_key_tree() -> None:
    """keys.py (file and env checks) and the dataclasses agree."""
    tables = {"shutdown_timeout", "log", "metrics", "listener", "auth", "handler", "bridge"} | {"run"}
    assert set(ROOT.keys) == tables | {"cluster"}
    listener = ROOT.keys["listener"]
    assert isinstance(listener, TableArray)
    # every field but `options`: a listener kind's own keys, written flat in the listener's table
    assert set(listener.item.keys) == {f.name for f in dataclasses.fields(ListenerSettings)} - {"options"}
    assert "options" not in listener.item.keys
    tls = listener.item.keys["tls"]
    assert isinstance(tls, Table)
    assert set(tls.keys) == {f.name for f in dataclasses.fields(TlsSettings)}
    assert tls.keys["verify"] is Kind.STRS


def test_file_without_listener_key_keeps_the_default_listener(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[log]\nlevel = "debug"\n'), env={})
    assert settings.log.level == "debug"
    assert settings.listeners == (DEFAULT_LISTENER,)
    assert load_settings(write(tmp_path, "listener = []\n"), env={}).listeners == ()


def test_full_listener(tmp_path: Path) -> None:
    text = """
[[listener]]
name = "ws"
protocol = "mqtt-ws"
address = "[::1]:8080"
target = "wss://broker.example:8443/mqtt"
path_prefix = "/mqtt"
max_packet_size = 16
connect_timeout = 3
refused_publish_v3 = "disconnect"

[[listener]]
name = "http"
protocol = "http"
address = "0.0.0.0:8081"
target = "mqtt"
"""
    assert issues(write(tmp_path, text)) == [
        (
            "listener[1].target",
            'publish mode (target = "mqtt") needs the bridge\'s MQTT session: add [bridge.mqtt]',
        )
    ]
    text += "[bridge.mqtt]\n"
    ws, http = load_settings(write(tmp_path, text), env={}).listeners
    assert (ws.host, ws.port, ws.path_prefix, ws.max_packet_size) == ("::1", 8080, "/mqtt", 16)
    assert ws.connect_timeout == 3.0 and isinstance(ws.connect_timeout, float)
    assert ws.refused_publish_v3 == "disconnect"
    assert ws.parsed_target == Target("wss", "broker.example", 8443, "/mqtt")
    assert http.parsed_target == Target("mqtt", "", 0, "")


# --- all problems at once --------------------------------------------------------------------------------


def test_three_mistakes_are_all_reported_with_their_paths(tmp_path: Path) -> None:
    text = f"""
[log]
level = "loud"
{LISTENER}
[auth]
handler = "static"
[[auth.users]]
username = "a"
password = "x"
[[auth.users]]
username = "b"
[[listener]]
name = "second"
protocol = "mqtt"
address = "127.0.0.1"
target = "tcp://127.0.0.1:1883"
"""
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env={})
    error = caught.value
    assert error.errors == [
        SettingIssue("log.level", "'loud' is not one of debug, info, warning, error"),
        SettingIssue("listener[1].address", "'127.0.0.1' is not host:port (the port is missing)"),
        SettingIssue("auth.users[1].password", "missing: set password, password_hash or identity"),
    ]
    assert str(error).splitlines() == [
        f"{path}: log.level: 'loud' is not one of debug, info, warning, error",
        f"{path}: listener[1].address: '127.0.0.1' is not host:port (the port is missing)",
        f"{path}: auth.users[1].password: missing: set password, password_hash or identity",
    ]


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[log]\nlevel = "info"\nformat = text\n')
    assert issues(path) == [("line 3, column 10", "TOML syntax error: Invalid value")]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path / "nope.toml", env={})
    assert (
        str(caught.value)
        == f"{tmp_path / 'nope.toml'}: cannot read the settings file: No such file or directory"
    )


def test_unknown_keys_with_suggestions(tmp_path: Path) -> None:
    text = LISTENER.replace("address =", "adress =") + '[metrics]\nadres = ""\n[logging]\nlevel = "info"\n'
    assert issues(write(tmp_path, text)) == [
        ("logging", "unknown key 'logging' (did you mean 'log'?)"),
        ("metrics.adres", "unknown key 'adres' (did you mean 'address'?)"),
        ("listener[0].adress", "unknown key 'adress' (did you mean 'address'?)"),
        ("listener[0].address", "missing (required)"),
    ]


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    assert issues(write(tmp_path, "[log]\ncolour = true\n")) == [
        ("log.colour", "unknown key 'colour'; known keys: level, format")
    ]


def test_wrong_types(tmp_path: Path) -> None:
    text = """
shutdown_timeout = "soon"
log = "debug"
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = 1884
target = "tcp://127.0.0.1:1883"
max_packet_size = true
connect_timeout = 0
[listener.tls]
cert_file = ["a"]
key_file = ""
verify = "ocsp"
"""
    assert issues(write(tmp_path, text)) == [
        ("shutdown_timeout", "expected a number, got a string ('soon')"),
        ("log", "expected a table ([log]), got a string ('debug')"),
        ("listener[0].address", "expected a string, got an integer (1884)"),
        ("listener[0].tls.cert_file", "expected a string, got an array"),
        ("listener[0].tls.key_file", "must not be empty"),
        ("listener[0].tls.verify", "expected an array of strings, got a string ('ocsp')"),
        ("listener[0].max_packet_size", "expected an integer, got a boolean (true)"),
        ("listener[0].connect_timeout", "must be a finite number > 0, got 0"),
    ]


def test_listener_written_as_a_table_instead_of_an_array(tmp_path: Path) -> None:
    text = '[listener]\nname = "mqtt"\n'
    assert issues(write(tmp_path, text)) == [
        ("listener", "expected an array of tables ([[listener]]), got a table")
    ]


def test_a_udp_and_a_tcp_listener_may_share_a_port_two_udp_ones_may_not(tmp_path: Path) -> None:
    coap = '[[listener]]\nname = "{name}"\nprotocol = "coap"\naddress = "127.0.0.1:1884"\ntarget = "coap://127.0.0.1:5683"\n'
    settings = load_settings(write(tmp_path, LISTENER + coap.format(name="c1")), env={})
    assert [(ls.protocol, ls.address) for ls in settings.listeners] == [
        ("mqtt", "127.0.0.1:1884"),
        ("coap", "127.0.0.1:1884"),
    ]
    text = LISTENER + coap.format(name="c1") + coap.format(name="c2")
    assert issues(write(tmp_path, text)) == [
        ("listener[2].address", "address 127.0.0.1:1884 is already used by listener[1]"),
    ]


def test_missing_required_listener_keys_and_bad_enums(tmp_path: Path) -> None:
    text = '[[listener]]\nprotocol = "amqp"\n[log]\nformat = "jsn"\nlevel = "warn"\n'
    assert issues(write(tmp_path, text)) == [
        ("log.level", "'warn' is not one of debug, info, warning, error (did you mean 'warning'?)"),
        ("log.format", "'jsn' is not one of text, json (did you mean 'json'?)"),
        ("listener[0].name", "missing (required)"),
        ("listener[0].protocol", "'amqp' is not one of mqtt, mqtt-ws, http, coap"),
        ("listener[0].address", "missing (required)"),
        ("listener[0].target", "missing (required)"),
    ]


def test_duplicate_listener_names_and_addresses(tmp_path: Path) -> None:
    text = (
        LISTENER
        + LISTENER.replace('"mqtt"\nprotocol', '"other"\nprotocol')
        + LISTENER.replace("1884", "1885")
    )
    text += '[metrics]\naddress = "127.0.0.1:1885"\n'
    assert issues(write(tmp_path, text)) == [
        ("listener[1].address", "address 127.0.0.1:1884 is already used by listener[0]"),
        ("listener[2].name", "duplicate listener name 'mqtt' (also listener[0])"),
        ("metrics.address", "address 127.0.0.1:1885 is already used by listener[2]"),
    ]


@pytest.mark.parametrize(
    ("protocol", "target", "message"),
    [
        ("mqtt", "ws://b:80", "a mqtt listener forwards to tcp | tls, not ws"),
        ("mqtt", "mqtt", "'mqtt' (publish mode) is only for http and coap listeners"),
        ("http", "tcp://b", "a http listener forwards to http | https | mqtt, not tcp"),
        ("coap", "https://b", "a coap listener forwards to coap | coaps | mqtt, not https"),
        ("mqtt", "ftp://b:21", "scheme 'ftp' is not one of tcp, tls, ws, wss, http, https, coap, coaps"),
        ("mqtt", "127.0.0.1:1883", "'127.0.0.1:1883' is not a URL (expected scheme://host:port)"),
        ("mqtt", "tcp://b:0", "port 0 is out of range 1..65535"),
        ("mqtt", "tcp://b:x", "port 'x' is not a number"),
        ("mqtt", "tcp://:1883", "the host is missing"),
        ("mqtt", "tcp://u:p@b:1883", "'tcp://u:p@b:1883': credentials in the URL are not supported"),
        ("mqtt", "tcp://b:1883/x", "'tcp://b:1883/x': a tcp target takes no path"),
        (
            "mqtt",
            "tcp://::1:1883",
            "'tcp://::1:1883': write IPv6 addresses in brackets, e.g. tcp://[::1]:1883",
        ),
    ],
)
def test_bad_targets(tmp_path: Path, protocol: str, target: str, message: str) -> None:
    text = LISTENER.replace('protocol = "mqtt"', f'protocol = "{protocol}"').replace(
        '"tcp://127.0.0.1:1883"', f'"{target}"'
    )
    assert issues(write(tmp_path, text)) == [("listener[0].target", message)]


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("localhost", "'localhost' is not host:port (the port is missing)"),
        ("127.0.0.1:65536", "port 65536 is out of range 1..65535"),
        ("::1:1884", "'::1:1884': write IPv6 addresses in brackets, e.g. [::1]:1884"),
        ("[::1]", "'[::1]' is not host:port (the port is missing)"),
        ("[nope]:1884", "'[nope]:1884': brackets are for IPv6 addresses only"),
        ("300.1.1.1:1884", "'300.1.1.1' is not a valid IPv4 address"),
        ("bad host:1884", "'bad host' is not a valid host name or IP address"),
        (":1884", "the host is missing"),
    ],
)
def test_bad_addresses(tmp_path: Path, address: str, message: str) -> None:
    text = LISTENER.replace('"127.0.0.1:1884"', f'"{address}"')
    assert issues(write(tmp_path, text)) == [("listener[0].address", message)]


def test_path_prefix_rules(tmp_path: Path) -> None:
    text = LISTENER + 'path_prefix = "mqtt"\n'
    assert issues(write(tmp_path, text)) == [
        ("listener[0].path_prefix", "'mqtt' must start with '/'"),
        ("listener[0].path_prefix", "only mqtt-ws and http listeners take a path prefix"),
    ]


def test_range_checks(tmp_path: Path) -> None:
    text = LISTENER + 'max_packet_size = 15\nrefused_publish_v3 = "drop"\n'
    assert issues(write(tmp_path, "shutdown_timeout = -1\n" + text)) == [
        ("shutdown_timeout", "must be a finite number > 0, got -1"),
        ("listener[0].max_packet_size", "15 is out of range 16..268435460"),
        ("listener[0].refused_publish_v3", "'drop' is not one of ack, disconnect"),
    ]


# --- TLS -------------------------------------------------------------------------------------------------


def make_files(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text("-----BEGIN PLACEHOLDER-----\n", encoding="utf-8")


def test_relative_tls_paths_are_resolved_against_the_file_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    make_files(conf_dir, "certs/server.crt", "certs/server.key", "certs/ca.crt", "certs/ca.crl")
    text = (
        LISTENER
        + """
[listener.tls]
cert_file = "certs/server.crt"
key_file = "certs/server.key"
client_ca_file = "certs/ca.crt"
verify = ["ocsp", "crl"]
ocsp_responder_url = "http://127.0.0.1:8888"
crl_file = "certs/ca.crl"
"""
    )
    path = write(conf_dir, text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tls = load_settings(Path("../etc/ferryman.toml"), env={}).listeners[0].tls
    certs = path.parent / "certs"
    assert tls == TlsSettings(
        cert_file=str(certs / "server.crt"),
        key_file=str(certs / "server.key"),
        client_ca_file=str(certs / "ca.crt"),
        verify=("ocsp", "crl"),
        ocsp_responder_url="http://127.0.0.1:8888",
        crl_file=str(certs / "ca.crl"),
    )
    assert tls.mutual


def test_tls_file_missing(tmp_path: Path) -> None:
    make_files(tmp_path, "server.key")
    text = LISTENER + '[listener.tls]\ncert_file = "server.crt"\nkey_file = "server.key"\n'
    assert issues(write(tmp_path, text)) == [
        ("listener[0].tls.cert_file", f"file not found: {tmp_path / 'server.crt'}")
    ]


def test_tls_required_keys_and_directories(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    text = LISTENER + '[listener.tls]\nclient_ca_file = "adir"\n'
    assert issues(write(tmp_path, text)) == [
        ("listener[0].tls.cert_file", "missing (required)"),
        ("listener[0].tls.key_file", "missing (required)"),
        ("listener[0].tls.client_ca_file", f"not a file: {tmp_path / 'adir'}"),
    ]


def test_tls_verify_rules(tmp_path: Path) -> None:
    make_files(tmp_path, "s.crt", "s.key", "ca.crl")
    text = (
        LISTENER
        + """
[listener.tls]
cert_file = "s.crt"
key_file = "s.key"
verify = ["crl", "crl", "ldap"]
ocsp_responder_url = "ftp://x"
crl_file = "ca.crl"
"""
    )
    assert issues(write(tmp_path, text)) == [
        ("listener[0].tls.verify[1]", "'crl' is listed twice"),
        ("listener[0].tls.verify[2]", "'ldap' is not one of ocsp, crl"),
        (
            "listener[0].tls.verify",
            "revocation checks are for client certificates: they need client_ca_file (mTLS)",
        ),
        ("listener[0].tls.ocsp_responder_url", "scheme 'ftp' is not one of http, https"),
        ("listener[0].tls.ocsp_responder_url", "is set but verify does not include 'ocsp'"),
    ]


def test_revocation_options(tmp_path: Path) -> None:
    make_files(tmp_path, "s.crt", "s.key", "ca.crt", "ca.crl")
    base = '[listener.tls]\ncert_file = "s.crt"\nkey_file = "s.key"\nclient_ca_file = "ca.crt"\n'
    good = (
        LISTENER
        + base
        + (
            'verify = ["crl", "ocsp"]\ncrl_url = "http://127.0.0.1:8889/crl.pem"\nverify_depth = 2\n'
            "revocation_timeout = 0.5\nrevocation_fail_open = true\nocsp_nonce = false\n"
        )
    )
    tls = load_settings(write(tmp_path, good), env={}).listeners[0].tls
    assert tls is not None
    assert (tls.crl_url, tls.verify_depth, tls.revocation_timeout) == (
        "http://127.0.0.1:8889/crl.pem",
        2,
        0.5,
    )
    assert tls.revocation_fail_open and not tls.ocsp_nonce
    defaults = (
        load_settings(write(tmp_path, LISTENER + base + 'verify = ["ocsp"]\n'), env={}).listeners[0].tls
    )
    assert defaults is not None
    assert (defaults.verify_depth, defaults.revocation_fail_open, defaults.ocsp_nonce) == (16, False, True)
    bad = (
        LISTENER
        + base
        + ('verify = ["ocsp"]\ncrl_url = "ftp://x"\nverify_depth = 0\nrevocation_fail_open = "yes"\n')
    )
    assert issues(write(tmp_path, bad)) == [
        ("listener[0].tls.crl_url", "scheme 'ftp' is not one of http, https"),
        ("listener[0].tls.crl_url", "is set but verify does not include 'crl'"),
        ("listener[0].tls.verify_depth", "0 is out of range 1..16"),
        ("listener[0].tls.revocation_fail_open", "expected a boolean, got a string ('yes')"),
    ]
    both = LISTENER + base + 'verify = ["crl"]\ncrl_file = "ca.crl"\ncrl_url = "http://h/c"\n'
    assert issues(write(tmp_path, both)) == [
        ("listener[0].tls.crl_url", "crl_file and crl_url exclude each other")
    ]


def test_target_tls_and_protocol_specific_keys(tmp_path: Path) -> None:
    make_files(tmp_path, "ca.crt", "c.crt", "c.key")
    good = LISTENER.replace("tcp://", "tls://") + (
        '[listener.target_tls]\nca_file = "ca.crt"\ncert_file = "c.crt"\nkey_file = "c.key"\n'
        'server_name = "broker"\n'
    )
    target_tls = load_settings(write(tmp_path, good), env={}).listeners[0].target_tls
    assert target_tls is not None
    assert target_tls.ca_file == str(tmp_path / "ca.crt") and target_tls.server_name == "broker"
    bad = (
        LISTENER
        + 'allowed_origins = ["https://a"]\nbypass = ["health"]\npublish_qos = 3\n'
        + '[listener.target_tls]\ncert_file = "c.crt"\n'
    )
    assert issues(write(tmp_path, bad)) == [
        ("listener[0].target_tls", "is for tls | wss | https | coaps targets, not tcp"),
        ("listener[0].allowed_origins", "only mqtt-ws listeners check the Origin header"),
        ("listener[0].bypass[0]", "'health' must start with '/'"),
        ("listener[0].bypass", "only http listeners have a bypass list"),
        ("listener[0].target_tls.key_file", "cert_file and key_file go together"),
        ("listener[0].publish_qos", "3 is out of range 0..2"),
    ]


# --- auth, handlers, bridge ------------------------------------------------------------------------------


def test_users(tmp_path: Path) -> None:
    text = """
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#", "a/#/b", "x+"]
subscribe = ["", 5]
[[auth.users]]
username = "dev1"
password = "pw"
password_hash = "h"
[[auth.users]]
password_hash = "h"
"""
    assert issues(write(tmp_path, text)) == [
        ("auth.users[0].subscribe[1]", "expected a string, got an integer (5)"),
        ("auth.users[0].publish[1]", "'a/#/b': '#' must be a whole level and the last one"),
        ("auth.users[0].publish[2]", "'x+': '+' must be a whole level"),
        ("auth.users[0].subscribe[0]", "'': empty topic filter"),
        ("auth.users[1].password_hash", "set password or password_hash, not both"),
        ("auth.users[2].username", "missing (required)"),
        ("auth.users[1].username", "duplicate username 'dev1' (also auth.users[0])"),
    ]


def test_auth_options_and_handlers(tmp_path: Path) -> None:
    text = """
[auth]
handler = "jwt"
[auth.options]
issuer = "https://id.example"
[[handler]]
name = "audit"
[handler.options]
level = 3
nested = { list = [1, 2] }
[[handler]]
name = "second"
"""
    settings = load_settings(write(tmp_path, text), env={})
    assert settings.auth.handler == "jwt"
    assert settings.auth.options == {"issuer": "https://id.example"}
    audit, second = settings.handlers
    assert (audit.name, second.name) == ("audit", "second")
    assert audit.options == {"level": 3, "nested": {"list": (1, 2)}}
    assert second.options == {}
    with pytest.raises(TypeError):
        audit.options["level"] = 4
    with pytest.raises(TypeError):
        audit.options["nested"]["list"] = 1


def test_handler_needs_a_name(tmp_path: Path) -> None:
    text = '[[handler]]\noptions = { a = 1 }\n[[handler]]\nname = ""\noptions = 3\n'
    assert issues(write(tmp_path, text)) == [
        ("handler[0].name", "missing (required)"),
        ("handler[1].name", "must not be empty"),
        ("handler[1].options", "expected a table, got an integer (3)"),
    ]


def test_bridge_tables_present_means_enabled(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[bridge.mqtt]\n"), env={})
    assert settings.bridge.xmpp is None
    assert settings.bridge.mqtt is not None
    assert (settings.bridge.mqtt.url, settings.bridge.mqtt.client_id) == (
        "tcp://127.0.0.1:1883",
        "ferryman-bridge",
    )


def test_bridge_errors(tmp_path: Path) -> None:
    text = """
[bridge.mqtt]
url = "http://127.0.0.1"
client_id = ""
[bridge.xmpp]
mode = "client"
jid = "gw.localhost"
server = "localhost"
allowed_jids = ["alice@localhost/phone"]
"""
    assert issues(write(tmp_path, text)) == [
        ("bridge.mqtt.url", "scheme 'http' is not one of tcp, tls, ws, wss"),
        ("bridge.mqtt.client_id", "must not be empty (the bridge keeps a persistent session)"),
        ("bridge.xmpp.jid", "'gw.localhost': a client JID is user@domain"),
        ("bridge.xmpp.secret", "missing: the component secret or the account's password is required"),
        ("bridge.xmpp.server", "'localhost' is not host:port (the port is missing)"),
        ("bridge.xmpp.allowed_jids[0]", "'alice@localhost/phone' is not a bare JID (user@domain)"),
    ]


def test_component_jid_is_a_domain(tmp_path: Path) -> None:
    text = '[bridge.xmpp]\njid = "gw@localhost"\nsecret = "s"\n'
    assert issues(write(tmp_path, text)) == [
        ("bridge.xmpp.jid", "'gw@localhost': a component JID is a domain (e.g. gw.localhost)")
    ]


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[metrics]\naddress = ""\n'), env={})
    assert settings.metrics.address == "" and not settings.metrics.enabled


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("tcp://broker", Target("tcp", "broker", 1883, "")),
        ("tls://broker", Target("tls", "broker", 8883, "")),
        ("ws://broker/mqtt", Target("ws", "broker", 80, "/mqtt")),
        ("wss://broker", Target("wss", "broker", 443, "")),
        ("http://10.0.0.1", Target("http", "10.0.0.1", 80, "")),
        ("https://api.example:8443/v1", Target("https", "api.example", 8443, "/v1")),
        ("coap://[::1]", Target("coap", "::1", 5683, "")),
        ("coaps://[fe80::1]:6000", Target("coaps", "fe80::1", 6000, "")),
        ("TCP://broker:1884/", Target("tcp", "broker", 1884, "")),
        ("mqtt", Target("mqtt", "", 0, "")),
    ],
)
def test_parse_target(target: str, expected: Target) -> None:
    assert parse_target(target) == expected


def test_target_helpers() -> None:
    assert parse_target("tls://[::1]:8883").address == "[::1]:8883"
    assert parse_target("tls://b").secure and not parse_target("tcp://b").secure
    assert parse_target("mqtt").is_publish and parse_target("mqtt").address == ""
    with pytest.raises(ValueError, match="scheme 'ws' is not one of tcp, tls"):
        parse_target("ws://b", ("tcp", "tls"))
    assert parse_address("[::1]:1884") == ("::1", 1884)
    assert parse_address("localhost:1") == ("localhost", 1)


# -- [listener.psk]: DTLS pre-shared keys of a coap listener ----------------------------------------------

PSK_LISTENER = """
[[listener]]
name = "coaps"
protocol = "{protocol}"
address = "127.0.0.1:5684"
target = "{target}"
[listener.psk]
{psk}
[bridge.mqtt]
"""


def test_psk_table(tmp_path: Path) -> None:
    from ferryman.config import render_settings, settings_to_dict

    text = PSK_LISTENER.format(protocol="coap", target="mqtt", psk='sensor-17 = "k17"\n"dev é" = "k2"')
    env = {"FERRYMAN_LISTENER__0__PSK__sensor-18": "k18"}
    settings = load_settings(write(tmp_path, text), env=env)
    (listener,) = settings.listeners
    assert dict(listener.psk) == {"sensor-17": "k17", "dev é": "k2", "sensor-18": "k18"}
    assert hash(listener) == hash(listener)  # still frozen and hashable
    assert ListenerSettings("a", "coap", "127.0.0.1:1", "mqtt").psk == {}
    # Keys are secrets: identities stay visible, keys are masked wherever settings are printed.
    for shown in (repr(listener), repr(settings), render_settings(settings)):
        assert "sensor-17" in shown and "k17" not in shown and "k18" not in shown and "k2" not in shown
    assert settings_to_dict(settings)["listener"][0]["psk"] == {
        "sensor-17": "****",
        "dev é": "****",
        "sensor-18": "****",
    }
    assert settings_to_dict(settings, mask=False)["listener"][0]["psk"]["sensor-17"] == "k17"


def test_psk_validation(tmp_path: Path) -> None:
    text = PSK_LISTENER.format(
        protocol="coap", target="mqtt", psk='"" = "k"\nnumber = 3\nempty = ""\nok = "k"'
    )
    assert issues(write(tmp_path, text)) == [
        ('listener[0].psk.""', "an identity must not be empty"),
        ("listener[0].psk.number", "expected a string (the pre-shared key), got an integer (3)"),
        ("listener[0].psk.empty", "the pre-shared key must not be empty"),
    ]
    text = PSK_LISTENER.format(protocol="mqtt", target="tcp://127.0.0.1:1883", psk='a = "k"')
    assert issues(write(tmp_path, text)) == [
        ("listener[0].psk", "pre-shared keys are for coap listeners (DTLS)")
    ]
    text = PSK_LISTENER.format(protocol="coap", target="mqtt", psk="").replace("[listener.psk]", "psk = 1")
    assert paths(write(tmp_path, text)) == ["listener[0].psk"]


def test_flood_batch_wait_is_bounded(tmp_path: Path) -> None:
    base = '[[listener]]\nname = "mqtt"\nprotocol = "mqtt"\naddress = "127.0.0.1:1884"\n'
    base += 'target = "tcp://127.0.0.1:1883"\n'
    assert issues(write(tmp_path, base + "flood_batch_wait = 0.5\n")) == [
        ("listener[0].flood_batch_wait", "at most 0.1 s (it delays messages), got 0.5")
    ]
    assert issues(write(tmp_path, base + "flood_batch_wait = -1\n")) == [
        ("listener[0].flood_batch_wait", "must be a finite number >= 0 (0 turns it off), got -1")
    ]
    assert (
        load_settings(write(tmp_path, base + "flood_batch_wait = 0\n"), env={}).listeners[0].flood_batch_wait
        == 0
    )
