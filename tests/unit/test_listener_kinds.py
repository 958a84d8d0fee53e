"""Listener kinds (ferryman/config/listener_kinds.py): a listener protocol declares its own settings keys and
checks, the loader takes the kinds from its caller and knows no protocol itself."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ferryman.config import (
    Kind,
    KindIssue,
    ListenerKey,
    ListenerKind,
    ListenerOptions,
    ListenerSettings,
    SettingsError,
    load_settings,
    render_settings,
    settings_to_dict,
    shared_except,
)
from ferryman.config.toml_writer import dumps

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def _validate(settings: ListenerSettings) -> list[KindIssue]:
    problems: list[KindIssue] = []
    if settings.options["max_line"] < len(settings.options["greeting"]):
        problems.append(("greeting", "is longer than max_line"))
    if settings.options["mode"] == "loud" and not settings.options["greeting"].isupper():
        problems.append("a loud listener greets in capitals")
    return problems


ECHO = ListenerKind(
    protocol="echo",
    shared_keys=frozenset({"max_connections"}),
    keys=(
        ListenerKey("greeting", Kind.STR, "hello", "sent first"),
        ListenerKey("max_line", Kind.INT, 1024, "longest line", minimum=1, maximum=65536),
        ListenerKey("ratio", Kind.FLOAT, 0.5, minimum=0, maximum=1),
        ListenerKey("mode", Kind.STR, "plain", choices=("plain", "loud")),
        ListenerKey("banner", Kind.STRS, ()),
        ListenerKey("passphrase", Kind.STR, "", secret=True),
        ListenerKey("verbose", Kind.BOOL, False),
    ),
    validate=_validate,
)
PROXY = ListenerKind(
    protocol="proxy",
    target_schemes=("tcp", "tls"),
    shared_keys=shared_except("path_prefix", "psk", "allowed_origins", "bypass"),
)
PUBLISHER = ListenerKind(
    protocol="publisher",
    target_schemes=("http", "mqtt"),
    shared_keys=shared_except("psk", "allowed_origins"),
    keys=(ListenerKey("site", Kind.STR, doc="required: no default"),),
)
KINDS: Mapping[str, ListenerKind] = {"proxy": PROXY, "publisher": PUBLISHER, "echo": ECHO}

ECHO_LISTENER = """
[metrics]
address = ""
[[listener]]
name = "echo"
protocol = "echo"
address = "127.0.0.1:7000"
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, kinds: Any = KINDS) -> Any:
    path = tmp_path / "ferryman.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, env=env or {}, kinds=kinds)


def issues(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, text, env)
    return [(issue.path, issue.message) for issue in caught.value.errors]


def test_the_loader_takes_the_kinds_from_its_caller() -> None:
    with pytest.raises(TypeError, match=r"needs the listener kinds .*ferryman\.load_settings"):
        load_settings(None, env={})


def test_a_kinds_own_keys_get_their_defaults(tmp_path: Path) -> None:
    (echo,) = load(tmp_path, ECHO_LISTENER).listeners
    assert isinstance(echo.options, ListenerOptions)
    assert dict(echo.options) == {
        "greeting": "hello",
        "max_line": 1024,
        "ratio": 0.5,
        "mode": "plain",
        "banner": (),
        "passphrase": "",
        "verbose": False,
    }
    assert echo.target == "" and echo.max_connections == 100_000
    assert echo.options == ECHO.default_options()


def test_a_kinds_own_keys_are_converted(tmp_path: Path) -> None:
    text = ECHO_LISTENER + (
        'greeting = "HI"\nmax_line = 80\nratio = 1\nmode = "loud"\nbanner = ["a", "b"]\n'
        'passphrase = "open sesame"\nverbose = true\nmax_connections = 3\n'
    )
    (echo,) = load(tmp_path, text).listeners
    assert echo.options["max_line"] == 80 and echo.options["ratio"] == 1.0
    assert isinstance(echo.options["ratio"], float)
    assert echo.options["banner"] == ("a", "b") and echo.options["verbose"] is True
    assert echo.max_connections == 3
    hash(echo)  # settings stay hashable


def test_every_problem_of_a_kinds_keys_is_reported_at_once(tmp_path: Path) -> None:
    text = ECHO_LISTENER + (
        'greting = "x"\nmax_line = "many"\nratio = 2.5\nmode = "quiet"\nbanner = [1]\nverbose = "yes"\n'
    )
    assert issues(tmp_path, text) == [
        ("listener[0].greting", "unknown key 'greting' (did you mean 'greeting'?)"),
        ("listener[0].max_line", "expected an integer, got a string ('many')"),
        ("listener[0].ratio", "2.5 is out of range 0..1"),
        ("listener[0].mode", "'quiet' is not one of plain, loud"),
        ("listener[0].banner[0]", "expected a string, got an integer (1)"),
        ("listener[0].verbose", "expected a boolean, got a string ('yes')"),
    ]


def test_a_required_own_key(tmp_path: Path) -> None:
    text = '[bridge.mqtt]\n[[listener]]\nname = "p"\nprotocol = "publisher"\naddress = "127.0.0.1:7000"\n'
    text += 'target = "mqtt"\n'
    assert issues(tmp_path, text) == [("listener[0].site", "missing (required): required: no default")]
    (listener,) = load(tmp_path, text + 'site = "a"\n').listeners
    assert listener.options == {"site": "a"}


def test_the_kinds_cross_key_checks(tmp_path: Path) -> None:
    text = ECHO_LISTENER + 'greeting = "hello there"\nmax_line = 5\nmode = "loud"\n'
    assert issues(tmp_path, text) == [
        ("listener[0].greeting", "is longer than max_line"),
        ("listener[0]", "a loud listener greets in capitals"),
    ]


def test_cross_key_checks_wait_for_keys_that_are_each_valid(tmp_path: Path) -> None:
    text = ECHO_LISTENER + 'greeting = "hello there"\nmax_line = 0\n'
    assert issues(tmp_path, text) == [("listener[0].max_line", "0 is out of range 1..65536")]


def test_a_failing_check_is_reported_not_raised(tmp_path: Path) -> None:
    def broken(settings: ListenerSettings) -> list[KindIssue]:
        raise KeyError("oops")

    kinds = {"echo": ListenerKind("echo", validate=broken)}
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, ECHO_LISTENER, kinds=kinds)
    assert caught.value.paths == ["listener[0]"]
    assert "the echo listener kind's checks failed: KeyError" in str(caught.value)


def test_an_unknown_protocol_names_the_known_kinds_and_nothing_else(tmp_path: Path) -> None:
    text = ECHO_LISTENER.replace('"echo"\naddress', '"ecoh"\naddress') + 'greeting = "x"\n'
    assert issues(tmp_path, text) == [
        ("listener[0].protocol", "'ecoh' is not one of proxy, publisher, echo (did you mean 'echo'?)"),
        ("listener[0].target", "missing (required)"),
    ]


def test_a_key_of_another_kind_is_unknown(tmp_path: Path) -> None:
    text = ECHO_LISTENER.replace('"echo"\naddress', '"proxy"\naddress')
    text += 'target = "tcp://127.0.0.1:1883"\ngreeting = "x"\n'
    ((where, message),) = issues(tmp_path, text)
    assert where == "listener[0].greeting" and message.startswith("unknown key 'greeting'; known keys: name")


def test_a_shared_key_its_kind_does_not_take(tmp_path: Path) -> None:
    text = ECHO_LISTENER + 'bypass = ["/x"]\npath_prefix = "/p"\npsk = {a = "b"}\nsocket_buffer = 4096\n'
    text += 'target = "tcp://127.0.0.1:1883"\n'
    assert issues(tmp_path, text) == [
        ("listener[0].target", "echo listeners take no target"),
        ("listener[0].path_prefix", "only publisher listeners take a path prefix"),
        ("listener[0].psk", "no listener kind takes psk"),
        ("listener[0].bypass", "only publisher listeners have a bypass list"),
        ("listener[0].socket_buffer", "only proxy and publisher listeners take socket_buffer"),
    ]


def test_a_shared_key_at_its_default_is_accepted_everywhere(tmp_path: Path) -> None:
    """`ferryman check --print` writes every shared key: what it prints loads again."""
    text = ECHO_LISTENER + 'target = ""\nsocket_buffer = 0\nbypass = []\nconnect_timeout = 10.0\n'
    (echo,) = load(tmp_path, text).listeners
    assert echo.socket_buffer == 0


def test_targets_follow_the_kinds(tmp_path: Path) -> None:
    text = """
[[listener]]
name = "a"
protocol = "proxy"
address = "127.0.0.1:7000"
target = "mqtt"
[[listener]]
name = "b"
protocol = "proxy"
address = "127.0.0.1:7001"
target = "http://h"
"""
    assert issues(tmp_path, text) == [
        ("listener[0].target", "'mqtt' (publish mode) is only for publisher listeners"),
        ("listener[1].target", "a proxy listener forwards to tcp | tls, not http"),
    ]


def test_secrets_of_a_kind_are_masked(tmp_path: Path) -> None:
    text = ECHO_LISTENER + 'passphrase = "open sesame"\n'
    settings = load(tmp_path, text)
    (echo,) = settings.listeners
    assert echo.options["passphrase"] == "open sesame"
    assert "open sesame" not in repr(echo) and "open sesame" not in repr(settings)
    assert "open sesame" not in render_settings(settings)
    assert 'passphrase = "****"' in render_settings(settings)
    assert settings_to_dict(settings, mask=False)["listener"][0]["passphrase"] == "open sesame"


def test_the_unmasked_rendering_loads_back_the_same_settings(tmp_path: Path) -> None:
    text = ECHO_LISTENER + 'passphrase = "s"\nmax_line = 9\nbanner = ["x"]\n'
    settings = load(tmp_path, text)
    again = tmp_path / "again.toml"
    again.write_text(dumps(settings_to_dict(settings, mask=False)), encoding="utf-8")
    reloaded = load_settings(again, env={}, kinds=KINDS)
    assert reloaded.listeners == settings.listeners
    assert tomllib.loads(again.read_text())["listener"][0]["max_line"] == 9


def test_the_environment_sets_a_kinds_keys_with_their_types(tmp_path: Path) -> None:
    env = {"FERRYMAN_LISTENER__0__MAX_LINE": "7", "FERRYMAN_LISTENER__0__VERBOSE": "yes"}
    (echo,) = load(tmp_path, ECHO_LISTENER, env).listeners
    assert (echo.options["max_line"], echo.options["verbose"]) == (7, True)
    bad = {"FERRYMAN_LISTENER__0__MAX_LINE": "many", "FERRYMAN_LISTENER__0__BYPASS": "/x"}
    assert issues(tmp_path, ECHO_LISTENER, bad) == [
        ("env FERRYMAN_LISTENER__0__BYPASS", "only publisher listeners have a bypass list"),
        ("env FERRYMAN_LISTENER__0__MAX_LINE", "expected an integer, got 'many'"),
    ]


def test_a_kind_cannot_shadow_a_shared_key() -> None:
    with pytest.raises(ValueError, match="shared listener key"):
        ListenerKind("x", keys=(ListenerKey("bypass", Kind.STRS, ()),))
    with pytest.raises(ValueError, match="not shared listener keys: nope"):
        ListenerKind("x", shared_keys=frozenset({"nope"}))
    with pytest.raises(ValueError, match="declared twice"):
        ListenerKind("x", keys=(ListenerKey("a", Kind.STR, ""), ListenerKey("a", Kind.INT, 0)))


def test_the_shipped_kinds_keep_the_rules_and_messages() -> None:
    from ferryman.protocols.coap.kind import COAP_KIND
    from ferryman.protocols.http.kind import HTTP_KIND
    from ferryman.protocols.mqtt.kind import MQTT_KIND
    from ferryman.protocols.websocket.kind import MQTT_WS_KIND
    from ferryman.wiring import LISTENERS, listener_kinds

    kinds = listener_kinds(LISTENERS)
    assert kinds == {"mqtt": MQTT_KIND, "mqtt-ws": MQTT_WS_KIND, "http": HTTP_KIND, "coap": COAP_KIND}
    assert all(cls.kind is kinds[name] for name, cls in LISTENERS.items())
    only = {key: [n for n, k in kinds.items() if key in k.shared_keys] for key in ("path_prefix", "psk")}
    assert only == {"path_prefix": ["mqtt-ws", "http"], "psk": ["coap"]}


def test_listener_plugins_come_with_their_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    import ferryman.wiring as wiring

    class Plugin:
        kind = ListenerKind("wrong-name")

    class NoKind:
        pass

    class EntryPoint:
        def __init__(self, name: str, target: Any) -> None:
            self.name, self.value, self._target = name, f"x:{name}", target

        def load(self) -> Any:
            if isinstance(self._target, Exception):
                raise self._target
            return self._target

    found = [
        EntryPoint("mqtt", object()),  # a shipped protocol wins
        EntryPoint("lines", Plugin),
        EntryPoint("nokind", NoKind),
        EntryPoint("broken", ImportError("no module named x")),
    ]
    monkeypatch.setattr(wiring, "entry_points", lambda group: found if group == wiring.LISTENER_GROUP else [])
    classes = wiring.listener_classes()
    assert list(classes) == ["mqtt", "mqtt-ws", "http", "coap", "lines"]
    assert classes["mqtt"] is wiring.LISTENERS["mqtt"]
    kinds = wiring.listener_kinds(classes)
    assert kinds["lines"].protocol == "lines"  # named by its entry point


def test_config_names_no_listener_protocol() -> None:
    """Protocol names in config/ code only as URL schemes of targets (network.py) and of OCSP / CRL URLs."""
    where: dict[str, set[str]] = {}
    for path in CONFIG_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("mqtt-ws", "coap", "http"):
                where.setdefault(node.value, set()).add(path.name)
    assert where == {"coap": {"network.py"}, "http": {"network.py", "build.py"}}
