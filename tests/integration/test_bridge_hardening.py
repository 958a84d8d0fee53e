"""Issue 11, the bridge from outside: a topic the broker refuses never wedges the bridge's one MQTT session
(HTTP publish mode with curl, XMPP ``publish`` / ``subscribe`` with slixmpp against prosody, and the session's
own port), a poison message is dropped instead of being re-sent for ever, and /health tells a flapping bridge
session from a healthy one."""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pykka
import pytest

from ferryman.actors.asyncio_host import AsyncioHost
from ferryman.protocols.mqtt.bridge_client import MqttBridgeClient
from tests.http_support import Reply, Subscriber, curl
from tests.integration.test_bridge_e2e import login, reply, say, until_answered
from tests.integration.test_prosody import USERS
from tests.prosody import Prosody
from tests.servers import GatewayProcess, Mosquitto, free_port

TIMEOUT = 10.0

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{{metrics_port}}"

[[listener]]
name = "pub"
protocol = "http"
address = "127.0.0.1:{{port}}"
target = "mqtt"
path_prefix = "/pub"

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "{client_id}"

[bridge.xmpp]
mode = "component"
jid = "{component}"
secret = "{secret}"
server = "127.0.0.1:{component_port}"
allowed_jids = ["alice@localhost"]
store = "{{workdir}}/bridge.sqlite3"
{xmpp_extra}
"""


@pytest.fixture(scope="module")
def xmpp(prosody: Prosody) -> Prosody:
    for user in ("alice", "bob"):
        prosody.register(user, USERS[user])
    return prosody


def start_gateway(
    gateway_factory: Any, broker: Mosquitto, xmpp: Prosody, xmpp_extra: str = ""
) -> tuple[GatewayProcess, str]:
    client_id = f"bridge-{uuid.uuid4().hex[:6]}"
    config = CONFIG.format(
        broker=broker.port,
        client_id=client_id,
        component=xmpp.component_jid,
        secret=xmpp.component_secret,
        component_port=xmpp.component_port,
        xmpp_extra=xmpp_extra,
    )
    gw: GatewayProcess = gateway_factory(config)
    return gw, client_id


def health(gw: GatewayProcess) -> dict[str, Any]:
    port = gw.metrics_port if gw.fills.get("metrics_on_port") is None else gw.port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    state: dict[str, Any] = json.loads(body)
    return state


def metrics(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def bridge_state(gw: GatewayProcess) -> dict[str, Any]:
    part: dict[str, Any] = health(gw)["parts"]["MqttBridgeClient"]
    return part


def eventually(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def link_losses(broker: Mosquitto, client_id: str) -> int:
    """How often the broker logged the end of one of ``client_id``'s connections (its own or a refusal)."""
    lines = broker.log.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if f"Client {client_id} " in line and "disconnect" in line.lower())


def http_publish(gw: GatewayProcess, path: str, body: bytes) -> Reply:
    return curl(f"http://127.0.0.1:{gw.port}/pub/{path}", "-u", "dev1:pw1", data=body)


def test_http_publish_with_a_control_character_does_not_wedge_the_bridge(
    gateway_factory: Any, broker: Mosquitto, xmpp: Prosody
) -> None:
    gw, client_id = start_gateway(gateway_factory, broker, xmpp)
    t = uuid.uuid4().hex[:6]
    eventually(lambda: bridge_state(gw).get("connected") is True, "the bridge session to connect")
    sub = Subscriber(broker.port, f"dev1/{t}/#", count=1).start()
    for path in (f"dev1/{t}/a%01b", f"dev1/{t}/c1%C2%9Fx", f"dev1/{t}/del%7F"):  # U+0001, U+009F, U+007F
        r = http_publish(gw, path, b"poison")
        # refused before it reaches the broker: by the listener (400) or, the last line, by the bridge's
        # session, whose refusal says why at once instead of a broker timeout
        assert r.status == 400 or (r.status == 502 and b"invalid topic" in r.body), r
    # the bridge still works for everyone: a normal publish is acknowledged and arrives, exactly once
    assert http_publish(gw, f"dev1/{t}/ok", b"fine").status == 202
    assert sub.messages() == [f"1 0 dev1/{t}/ok fine"]
    assert link_losses(broker, client_id) == 0
    state = bridge_state(gw)
    assert state["connected"] is True and state["status"] == "ok", state


def test_xmpp_publish_and_subscribe_with_control_characters_are_refused(
    gateway_factory: Any, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    """XML forbids C0 controls in a chat, but C1 controls and DEL pass: the bridge refuses them itself."""
    gw, client_id = start_gateway(gateway_factory, broker, xmpp)
    t = uuid.uuid4().hex[:6]
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: True)
    say(host, alice, f"subscribe cmd{t}/#")
    assert reply(host, alice, lambda b: b.startswith(("subscribed", "error"))) == f"subscribed cmd{t}/#"
    for bad in (f"cmd{t}/a\x7fb", f"cmd{t}/\x80", f"cmd{t}/x\x9f"):
        say(host, alice, f"publish {bad} poison")
        answer = reply(host, alice, lambda b: b.startswith(("published", "error")))
        assert answer.startswith("error: "), answer
        assert "U+00" in answer
    say(host, alice, f"subscribe cmd{t}/\x9f/#")
    answer = reply(host, alice, lambda b: b.startswith(("subscribed", "error")))
    assert answer.startswith("error: ") and "U+009F" in answer, answer
    # a normal publish goes through and comes back to alice once: nothing is re-sent after a reconnect
    deadline = time.monotonic() + 20
    while True:  # the broker subscription is asynchronous
        say(host, alice, f"publish cmd{t}/probe x")
        try:
            reply(host, alice, lambda b: b == f"cmd{t}/probe: x", timeout=1.0)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "no delivery"
    say(host, alice, f"publish cmd{t}/ok fine")
    seen: list[str] = []
    end = time.monotonic() + 4
    while time.monotonic() < end:
        with contextlib.suppress(AssertionError):
            seen.append(reply(host, alice, lambda b: f"cmd{t}/ok" in b, timeout=0.5))
    assert sorted(seen) == sorted([f"published cmd{t}/ok", f"cmd{t}/ok: fine"]), seen
    assert link_losses(broker, client_id) == 0
    assert bridge_state(gw)["status"] == "ok"


# -- the session's own port --------------------------------------------------------------------------------


@pytest.fixture
def session() -> Iterator[Callable[..., Any]]:
    refs: list[pykka.ActorRef[Any]] = []

    def start(port: int, client_id: str, **kwargs: Any) -> pykka.ActorRef[Any]:
        kwargs.setdefault("reconnect_min", 0.1)
        kwargs.setdefault("reconnect_max", 0.5)
        kwargs.setdefault("ack_timeout", 5.0)
        kwargs.setdefault("publish_timeout", 5.0)
        ref = MqttBridgeClient.start(f"tcp://127.0.0.1:{port}", client_id, lambda m: None, **kwargs)
        refs.append(ref)
        return ref

    yield start
    for ref in refs:
        if ref.is_alive():
            ref.stop(timeout=TIMEOUT)


def gevent_eventually(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        gevent.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_session_port_refuses_topics_and_filters_the_broker_would_refuse(
    session: Callable[..., Any], broker: Mosquitto
) -> None:
    client_id = f"port-{uuid.uuid4().hex[:6]}"
    proxy = session(broker.port, client_id).proxy()
    gevent_eventually(lambda: bool(proxy.is_connected().get(timeout=TIMEOUT)), "connected")
    for topic in ("a/\x01", "a/\x7f", "a/\x9f", "a/\ufffe", "", "a/+", "a/\ud800"):
        d = proxy.publish_async(topic, b"x").get(timeout=TIMEOUT)
        assert d.wait(1) is False
        assert d.invalid and d.reason.startswith("invalid topic"), d.reason
    assert (
        proxy.publish_many([("a/\x01", b"x", 1, False), ("a/ok", b"y", 1, False)])
        .get(timeout=TIMEOUT)[0]
        .invalid
    )
    for topic_filter in ("a/\x01/#", "\x85", "a/b#"):
        assert proxy.subscribe(topic_filter).get(timeout=TIMEOUT) is False
        assert topic_filter not in proxy.filters().get(timeout=TIMEOUT)
    assert proxy.publish("a/ok", b"y").get(timeout=TIMEOUT) is True
    assert proxy.connect_count().get(timeout=TIMEOUT) == 1
    assert link_losses(broker, client_id) == 0


def test_a_poison_message_is_dropped_not_resent_for_ever(
    session: Callable[..., Any], broker: Mosquitto
) -> None:
    """A message slipped past the validation (straight into paho) that the broker answers by closing the link:
    after two closings right after it the session drops it with an error and works again."""
    client_id = f"poison-{uuid.uuid4().hex[:6]}"
    ref = session(broker.port, client_id)
    proxy = ref.proxy()
    gevent_eventually(lambda: bool(proxy.is_connected().get(timeout=TIMEOUT)), "connected")
    actor = next(o for o in gc.get_objects() if isinstance(o, MqttBridgeClient) and o.client_id == client_id)
    info = actor._client.publish("poison/\x01", b"bad", qos=1)  # below the port: what a paho bug would do
    gevent_eventually(
        lambda: proxy.health().get(timeout=TIMEOUT)["dropped"] >= 1, "the poison message to be dropped", 30
    )
    assert not info.is_published()
    gevent_eventually(lambda: bool(proxy.is_connected().get(timeout=TIMEOUT)), "connected again")
    losses = link_losses(broker, client_id)
    assert 1 <= losses <= 3, losses
    assert proxy.publish("poison/ok", b"y").get(timeout=TIMEOUT) is True
    gevent.sleep(1.5)  # no further link losses: the message is gone
    assert link_losses(broker, client_id) == losses
    state = proxy.health().get(timeout=TIMEOUT)
    assert state["connected"] is True and state["dropped"] == 1
    assert "poison/" in state["last_error"]


class FlappingBroker:
    """Accepts MQTT connections, answers CONNECT with a CONNACK (MQTT 5, success) and closes at once: a
    session that keeps reconnecting."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(b"\x20\x03\x00\x00\x00")
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


HEALTH_CONFIG = """
listener = []
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{port}"
[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "flap"
"""


def test_health_shows_a_flapping_bridge_session(gateway_factory: Any) -> None:
    fake = FlappingBroker()
    try:
        gw: GatewayProcess = gateway_factory(
            HEALTH_CONFIG.replace("{broker}", str(fake.port)), fills={"metrics_on_port": True}
        )
        eventually(lambda: fake.accepted >= 4, "several reconnects", 30)
        state = bridge_state(gw)
        assert state["status"] != "ok", state
        assert state["status"] == "flapping", state
        assert health(gw)["bridge"] != "ok"
    finally:
        fake.stop()


# -- bounded per JID (issue 11, defect 9) and the defaults for JIDs without a rule ---------------------------


def replies(host: AsyncioHost, client: Any, want: Callable[[str], bool], seconds: float) -> list[str]:
    """Every chat body satisfying ``want`` within ``seconds``."""
    got: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(AssertionError):
            got.append(reply(host, client, want, timeout=0.3))
    return got


def test_subscriptions_per_jid_are_capped_in_store_and_broker(
    gateway_factory: Any, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    gw, _ = start_gateway(
        gateway_factory,
        broker,
        xmpp,
        "max_subscriptions_per_jid = 5\ncommand_rate = 1000\ncommand_burst = 1000",
    )
    t = uuid.uuid4().hex[:6]
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: True)
    for i in range(12):
        say(host, alice, f"subscribe cap{t}/{i}")
    got = replies(host, alice, lambda b: f"cap{t}/" in b or b.startswith("error"), 5)
    assert len([b for b in got if b.startswith("subscribed")]) == 5, got
    refused = [b for b in got if b.startswith("error: subscription limit reached")]
    assert len(refused) == 7, got
    # the store, the broker subscriptions and the metrics stay at the cap
    rows = sqlite3.connect(str(gw.workdir / "bridge.sqlite3")).execute(
        "SELECT count(*) FROM subscriptions WHERE jid = 'alice@localhost' AND filter LIKE ?", (f"cap{t}/%",)
    )
    assert rows.fetchone()[0] == 5
    eventually(lambda: bridge_state(gw)["filters"] == 5, "5 broker subscriptions")
    text = metrics(gw)
    assert "ferryman_bridge_subscriptions 5.0" in text
    assert 'ferryman_bridge_commands_refused_total{reason="max_subscriptions_per_jid"} 7.0' in text
    # unsubscribing makes room again
    say(host, alice, f"unsubscribe cap{t}/0")
    assert reply(host, alice, lambda b: b.startswith(("unsubscribed", "error"))) == f"unsubscribed cap{t}/0"
    say(host, alice, f"subscribe cap{t}/11")
    assert reply(host, alice, lambda b: b.startswith(("subscribed", "error"))) == f"subscribed cap{t}/11"


def test_command_flood_is_rate_limited_with_one_error(
    gateway_factory: Any, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    gw, _ = start_gateway(gateway_factory, broker, xmpp, "command_rate = 1\ncommand_burst = 3")
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: True)
    time.sleep(3.5)  # a full bucket
    for _ in range(60):
        say(host, alice, "list")
    got = replies(host, alice, lambda b: True, 3)
    answered = [b for b in got if not b.startswith("error")]
    errors = [b for b in got if b.startswith("error")]
    assert 3 <= len(answered) <= 8, got  # the burst, and what refills while the flood is read
    assert len(errors) == 1 and "too many commands" in errors[0], got
    text = metrics(gw)
    line = next(
        x for x in text.splitlines() if x.startswith('ferryman_bridge_commands_refused_total{reason="rate"}')
    )
    assert float(line.split()[-1]) >= 50
    time.sleep(1.5)
    say(host, alice, "list")  # the JID is served again
    assert not reply(host, alice, lambda b: True).startswith("error")


def test_jid_without_rule_gets_the_default_filters_and_never_dollar_topics(
    gateway_factory: Any, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    start_gateway(
        gateway_factory, broker, xmpp, 'default_subscribe = ["public/#"]\ndefault_publish = ["public/#"]'
    )
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: True)
    for command in ("subscribe #", "subscribe other/x", "publish other/x y", "subscribe $SYS/#"):
        say(host, alice, command)
        assert reply(host, alice, lambda b: True).startswith("error: not allowed"), command
    say(host, alice, "subscribe public/x")
    assert reply(host, alice, lambda b: True) == "subscribed public/x"


def test_default_lets_an_allowed_jid_use_ordinary_topics_but_not_dollar_topics(
    gateway_factory: Any, broker: Mosquitto, xmpp: Prosody, host: AsyncioHost
) -> None:
    start_gateway(gateway_factory, broker, xmpp)
    t = uuid.uuid4().hex[:6]
    alice = login(host, xmpp, "alice")
    until_answered(host, alice, "list", lambda b: True)
    for command in ("subscribe $SYS/#", "subscribe $SYS/broker/uptime", "publish $SYS/x y"):
        say(host, alice, command)
        assert reply(host, alice, lambda b: True).startswith("error: not allowed"), command
    say(host, alice, f"subscribe any{t}/#")
    assert reply(host, alice, lambda b: True) == f"subscribed any{t}/#"


# -- SIGHUP with an empty settings file (issue 11, defect 7) -------------------------------------------------

SIGHUP_CONFIG = """
[metrics]
address = ""
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{{port}}"
target = "tcp://127.0.0.1:{broker}"
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#"]
"""


HALF_WRITTEN = SIGHUP_CONFIG.split("[[auth.users]]")[0]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "the settings file is empty"),
        ("\n  \n", "the settings file is empty"),
        ("# being written\n", "the settings file is empty"),
        (HALF_WRITTEN, "it would remove all 1 user(s)"),
    ],
)
def test_sighup_with_an_empty_settings_file_keeps_the_old_settings(
    gateway_factory: Any, broker: Mosquitto, content: str, why: str
) -> None:
    gw: GatewayProcess = gateway_factory(SIGHUP_CONFIG.format(broker=broker.port))
    t = uuid.uuid4().hex[:6]
    base = ["-h", "127.0.0.1", "-p", str(gw.port), "-u", "dev1", "-P", "pw1", "-q", "1", "-t", f"dev1/{t}"]
    sub = subprocess.Popen(
        ["stdbuf", "-oL", "mosquitto_sub", *base, "-C", "1", "-W", "30", "-d", "-i", f"live-{t}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert sub.stdout is not None
        for line in sub.stdout:
            if "SUBACK" in line:
                break
        gw.config_path.write_text(
            content.format(broker=broker.port).format(port=gw.port)
        )  # a deploy caught midway
        gw.send_signal(signal.SIGHUP)
        eventually(lambda: "settings not reloaded" in gw.stderr(), "the refusal in the log")
        assert why in gw.stderr()
        assert "new grant for" not in gw.stderr() and "revok" not in gw.stderr().lower()
        # a new CONNECT with the old password works, and the live session is still subscribed
        subprocess.run(["mosquitto_pub", *base, "-m", "still-here", "-i", f"pub-{t}"], check=True, timeout=10)
        out, _ = sub.communicate(timeout=20)
        assert f"dev1/{t}" in out and "still-here" in out, out
        assert sub.returncode == 0
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def test_check_and_run_refuse_an_empty_settings_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("\n")
    for command in ("check", "run"):
        out = subprocess.run(
            [sys.executable, "-m", "ferryman", command, "--config", str(empty)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode != 0, (command, out)
        assert "the settings file is empty" in out.stderr, (command, out.stderr)


# -- the one validation function ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    ["a/\x01", "\x1f", "a\x7f", "\x80", "x/\x9f", "\ufdd0", "\ufffe", "\U0010ffff", "\ud800", "", "a/+", "#"],
)
def test_validate_topic_name_refuses_what_the_broker_refuses(topic: str) -> None:
    from ferryman.actors.topics import validate_topic_name

    assert validate_topic_name(topic) is not None


@pytest.mark.parametrize("topic", ["a/b", "café/€", "$SYS/x", "/", "a" * 65535, "\U0001f600"])
def test_validate_topic_name_accepts_ordinary_topics(topic: str) -> None:
    from ferryman.actors.topics import validate_topic_filter, validate_topic_name

    assert validate_topic_name(topic) is None
    assert validate_topic_filter(topic) is None


def test_validate_topic_filter() -> None:
    from ferryman.actors.topics import validate_topic_filter

    assert validate_topic_filter("a/+/#") is None
    for bad in ("a/\x01/#", "a/#/b", "a+", "", "\x9f", "a" * 65536):
        assert validate_topic_filter(bad) is not None, bad
