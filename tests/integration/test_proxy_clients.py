"""Independent MQTT clients through the proxy: mosquitto_pub/mosquitto_sub and paho-mqtt, on MQTT 3.1.1
and 5, against the session's real mosquitto.

These clients know nothing of ferryman; what they print and the callbacks they fire are the evidence that
the proxy speaks MQTT as a real deployment would see it.
"""

from __future__ import annotations

import queue
import shlex
import subprocess
import threading
from typing import Any

import gevent
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ferryman.protocols.mqtt.packets import Disconnect, Pingreq, Pingresp, Publish, Will
from tests.rawclient import RawClient, spy
from tests.servers import GatewayProcess, Mosquitto, uid

TIMEOUT = 10.0
VERSIONS = [pytest.param("mqttv311", id="v311"), pytest.param("mqttv5", id="v5")]


# ---------------------------------------------------------------------------------------------- mosquitto


def tool(command: str, port: int, user: str = "dev1", password: str = "pw1") -> list[str]:
    """``command`` (shell syntax) with the proxy's address and the credentials after the program name."""
    name, *args = shlex.split(command)
    return [name, "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password, *args]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)


class Sub:
    """A ``mosquitto_sub -d`` process; ``subscribed()`` waits for its SUBACK line, ``finish()`` for its exit.

    With ``-d`` the debug lines go to stdout with the messages; ``messages`` are the other lines."""

    def __init__(self, argv: list[str]) -> None:
        assert "-d" in argv and "-W" in argv, "always debug output (to sync on SUBACK) and a timeout"
        self.argv = argv
        # stdbuf: mosquitto_sub's stdout is a pipe here, which libc would otherwise flush only at exit
        self.proc = subprocess.Popen(["stdbuf", "-oL", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.head: list[str] = []

    def subscribed(self) -> str:
        """The ``Subscribed (mid: N): codes`` line mosquitto_sub prints once it has its SUBACK."""
        assert self.proc.stdout is not None
        with gevent.Timeout(TIMEOUT, AssertionError(f"no SUBACK for {self.argv}: {self.head}")):
            while True:
                raw = self.proc.stdout.readline()
                if not raw:
                    self.finish()
                    raise AssertionError(f"mosquitto_sub ended before its SUBACK: {self.head}")
                line = raw.decode(errors="replace").rstrip("\n")
                self.head.append(line)
                if line.startswith("Subscribed (mid:"):
                    return line

    def finish(self) -> tuple[int, list[str], str]:
        """(exit code, message lines, stderr) once the process ends (killed if it outlives TIMEOUT)."""
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        lines = self.head + out.decode(errors="replace").splitlines()
        messages = [ln for ln in lines if not ln.startswith(("Client ", "Subscribed (mid:"))]
        return self.proc.returncode, messages, err.decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_pub_sub_each_qos(proxy: GatewayProcess, version: str, qos: int) -> None:
    u = uid()
    sub = Sub(
        tool(f"mosquitto_sub -d -V {version} -t dev1/{u}/# -q {qos} -C 1 -W 10 -F %t|%q|%r|%p", proxy.port)
    )
    try:
        assert sub.subscribed() == f"Subscribed (mid: 1): {qos}"
        pub = run(tool(f"mosquitto_pub -d -V {version} -t dev1/{u}/t -q {qos} -m 'hello {qos}'", proxy.port))
        assert pub.returncode == 0, pub.stderr
        # the publisher's acknowledgement flow went through the proxy and back
        expected_ack = {0: None, 1: "received PUBACK", 2: "received PUBCOMP"}[qos]
        if expected_ack:
            assert expected_ack in pub.stdout, pub.stdout
        rc, messages, err = sub.finish()
        assert (rc, messages) == (0, [f"dev1/{u}/t|{qos}|0|hello {qos}"]), err
    finally:
        sub.kill()


def test_mosquitto_v5_user_property_acceptance(proxy: GatewayProcess) -> None:
    """The acceptance case: mosquitto_sub on dev1/# sees the user property mosquitto_pub set (-R: retained
    messages other tests may have left under dev1/ are not printed)."""
    u = uid()
    sub = Sub(tool("mosquitto_sub -d -t 'dev1/#' -V mqttv5 -F '%t %p %P' -R -C 1 -W 10", proxy.port))
    try:
        assert sub.subscribed() == "Subscribed (mid: 1): 0"
        pub = run(
            tool(f"mosquitto_pub -t dev1/{u}/t -m hi -V mqttv5 -D publish user-property k v", proxy.port)
        )
        assert pub.returncode == 0, pub.stderr
        rc, messages, err = sub.finish()
        assert (rc, messages) == (0, [f"dev1/{u}/t hi k:v"]), err
    finally:
        sub.kill()


def test_mosquitto_v5_repeated_user_properties_and_other_properties(proxy: GatewayProcess) -> None:
    u = uid()
    sub = Sub(
        tool(
            f"mosquitto_sub -d -V mqttv5 -t 'dev1/{u}/#' -q 1 -F '%t|%p|%P|%C|%R|%D|%E' -C 1 -W 10",
            proxy.port,
        )
    )
    try:
        sub.subscribed()
        pub = run(
            tool(
                f"mosquitto_pub -V mqttv5 -q 1 -t dev1/{u}/t -m körper"
                " -D publish user-property k v1 -D publish user-property k v2"
                " -D publish user-property schlüssel 'wert ✓' -D publish content-type text/plain"
                f" -D publish response-topic dev1/{u}/reply -D publish correlation-data corr-42"
                " -D publish message-expiry-interval 3600",
                proxy.port,
            )
        )
        assert pub.returncode == 0, pub.stderr
        rc, messages, err = sub.finish()
        assert rc == 0, err
        assert len(messages) == 1
        topic, payload, props, ctype, resp, corr, expiry = messages[0].split("|")
        assert (topic, payload) == (f"dev1/{u}/t", "körper")
        assert props == "k:v1 k:v2 schlüssel:wert ✓"
        assert (ctype, resp, corr) == ("text/plain", f"dev1/{u}/reply", "corr-42")
        assert int(expiry) in (3599, 3600)  # the broker counts down the remaining lifetime
    finally:
        sub.kill()


@pytest.mark.parametrize(
    ("version", "code", "message"),
    [
        ("mqttv311", 5, "Connection error: Connection Refused: not authorised."),
        ("mqttv5", 135, "Connection error: Not authorized"),
    ],
    ids=["v311", "v5"],
)
def test_mosquitto_pub_wrong_password(proxy: GatewayProcess, version: str, code: int, message: str) -> None:
    """Exit code = the CONNACK code (5, or 135 = 0x87 on v5), with mosquitto_pub's own wording for it."""
    bad = run(tool(f"mosquitto_pub -V {version} -t dev1/x -m x", proxy.port, password="nope"))
    assert bad.returncode == code, (bad.stdout, bad.stderr)
    assert message in bad.stderr.splitlines()
    # positive control: the same command with the right password works
    good = run(tool(f"mosquitto_pub -V {version} -t dev1/x -m x", proxy.port))
    assert (good.returncode, good.stderr) == (0, "")


@pytest.mark.parametrize(("version", "refused"), [("mqttv311", 128), ("mqttv5", 135)], ids=["v311", "v5"])
def test_mosquitto_sub_refused_subscription(proxy: GatewayProcess, version: str, refused: int) -> None:
    """Every filter refused: mosquitto_sub reports the SUBACK code, says all were denied and exits 0."""
    sub = Sub(tool(f"mosquitto_sub -d -V {version} -t 'secret/#' -q 1 -W 10", proxy.port))
    try:
        assert sub.subscribed() == f"Subscribed (mid: 1): {refused}"
        rc, messages, err = sub.finish()
        assert rc == 0
        assert messages == []
        assert err.splitlines() == ["All subscription requests were denied."]
    finally:
        sub.kill()


@pytest.mark.parametrize(("version", "refused"), [("mqttv311", 128), ("mqttv5", 135)], ids=["v311", "v5"])
def test_mosquitto_sub_partly_refused_subscription_still_delivers(
    proxy: GatewayProcess, broker: Mosquitto, version: str, refused: int
) -> None:
    """One SUBSCRIBE with a refused and an allowed filter: the merged SUBACK lists both codes in order and
    the allowed one delivers."""
    u = uid()
    sub = Sub(
        tool(
            f"mosquitto_sub -d -V {version} -q 1 -t 'secret/{u}/#' -t 'dev1/{u}/#' -C 1 -W 10 -F '%t %p'",
            proxy.port,
        )
    )
    try:
        assert sub.subscribed() == f"Subscribed (mid: 1): {refused}, 1"
        direct = RawClient(broker.port, 5)
        assert direct.connect(f"pub-{uid()}").reason_code == 0
        direct.publish(f"secret/{u}/x", b"hidden", qos=1)  # matches the refused filter: never delivered
        direct.publish(f"dev1/{u}/x", b"shown", qos=1)
        direct.disconnect()
        rc, messages, err = sub.finish()
        assert (rc, messages) == (0, [f"dev1/{u}/x shown"]), err
    finally:
        sub.kill()


@pytest.mark.parametrize("version", VERSIONS)
def test_mosquitto_retained_message_through_proxy(proxy: GatewayProcess, version: str) -> None:
    u = uid()
    topic = f"dev1/{u}/state"
    pub = run(tool(f"mosquitto_pub -V {version} -t {topic} -m on -r -q 1", proxy.port))
    assert pub.returncode == 0, pub.stderr
    try:
        got = run(tool(f"mosquitto_sub -V {version} -t 'dev1/{u}/#' -C 1 -W 5 -F '%t|%r|%p'", proxy.port))
        assert (got.returncode, got.stdout) == (0, f"{topic}|1|on\n"), got.stderr
    finally:
        clear = run(tool(f"mosquitto_pub -V {version} -t {topic} -n -r -q 1", proxy.port))
        assert clear.returncode == 0, clear.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_mosquitto_sub_killed_its_will_reaches_broker(
    proxy: GatewayProcess, broker: Mosquitto, version: str
) -> None:
    u = uid()
    watcher = spy(broker.port, f"dev1/{u}/#")
    sub = Sub(
        tool(
            f"mosquitto_sub -d -V {version} -t dev1/{u}/in -W 10"
            f" --will-topic dev1/{u}/will --will-payload gone --will-qos 1",
            proxy.port,
        )
    )
    try:
        sub.subscribed()
        sub.proc.kill()  # SIGKILL: the socket closes without DISCONNECT
        will = watcher.expect(Publish)
        assert (will.topic, will.payload, will.qos) == (f"dev1/{u}/will", b"gone", 1)
    finally:
        sub.kill()
        watcher.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_raw_client_abrupt_close_publishes_will_but_clean_disconnect_does_not(
    proxy: GatewayProcess, broker: Mosquitto, version: int
) -> None:
    u = uid()
    watcher = spy(broker.port, f"dev1/{u}/#")
    # a clean DISCONNECT first: the broker discards that Will; the next message the watcher sees is the
    # rude client's, so the polite one was never published
    polite = RawClient(proxy.port, version)
    will = Will(f"dev1/{u}/will", b"polite", qos=1)
    assert polite.connect(f"polite-{u}", "dev1", "pw1", will=will).reason_code == 0
    polite.disconnect()
    rude = RawClient(proxy.port, version)
    will = Will(f"dev1/{u}/will", b"rude", qos=1)
    assert rude.connect(f"rude-{u}", "dev1", "pw1", will=will).reason_code == 0
    rude.close()
    got = watcher.expect(Publish)
    assert (got.topic, got.payload) == (f"dev1/{u}/will", b"rude")
    watcher.disconnect()


# ---------------------------------------------------------------------------------------------- paho


class Paho:
    """A paho-mqtt 2.x client whose callbacks fill events and queues the test waits on with timeouts."""

    def __init__(
        self,
        version: int,
        client_id: str = "",
        username: str = "dev1",
        password: str = "pw1",
        clean_session: bool = True,
    ) -> None:
        self.version = version
        if version == 5:
            self.client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            self.client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=clean_session,
            )
        self.client.username_pw_set(username, password)
        self.connected = threading.Event()
        self.session_present: bool | None = None
        self.reason: ReasonCode | None = None
        self.log: list[str] = []
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[tuple[int, list[ReasonCode]]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_log = self._on_log

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.session_present = bool(flags.session_present)
        self.reason = reason
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        self.subacks.put((mid, codes))

    def _on_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        self.log.append(buf)

    def connect(
        self, port: int, clean_start: bool = True, properties: Properties | None = None
    ) -> ReasonCode:
        if self.version == 5:
            self.client.connect(
                "127.0.0.1", port, keepalive=30, clean_start=clean_start, properties=properties
            )
        else:
            self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), f"no CONNACK: {self.log}"
        assert self.reason is not None
        return self.reason

    def subscribe(self, topic_filter: str, qos: int) -> list[ReasonCode]:
        result, mid = self.client.subscribe(topic_filter, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, codes = self.subacks.get(timeout=TIMEOUT)
        assert got_mid == mid
        return codes

    def publish(self, topic: str, payload: bytes, qos: int, properties: Properties | None = None) -> None:
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("version", [4, 5])
def test_paho_publish_and_receive_each_qos(proxy: GatewayProcess, version: int) -> None:
    u = uid()
    sub = Paho(version)
    pub = Paho(version)
    try:
        assert sub.connect(proxy.port) == "Success"
        assert pub.connect(proxy.port) == "Success"
        assert [c.value for c in sub.subscribe(f"dev1/{u}/#", 2)] == [2]
        for qos in (0, 1, 2):
            pub.publish(f"dev1/{u}/q{qos}", f"payload {qos}".encode(), qos)
            msg = sub.message()
            assert (msg.topic, msg.payload, msg.qos, msg.retain) == (
                f"dev1/{u}/q{qos}",
                f"payload {qos}".encode(),
                qos,
                False,
            )
    finally:
        sub.stop()
        pub.stop()


def test_paho_v5_message_properties_arrive_intact(proxy: GatewayProcess) -> None:
    u = uid()
    sub = Paho(5)
    pub = Paho(5)
    try:
        assert sub.connect(proxy.port) == "Success"
        assert pub.connect(proxy.port) == "Success"
        assert [c.value for c in sub.subscribe(f"dev1/{u}/#", 1)] == [1]
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v1"), ("k", "v2"), ("ключ", "значение"), ("emoji", "🚀")]
        props.ContentType = "application/json; charset=utf-8"
        props.ResponseTopic = f"dev1/{u}/reply"
        props.CorrelationData = bytes(range(256))
        props.MessageExpiryInterval = 3600
        props.PayloadFormatIndicator = 1
        pub.publish(f"dev1/{u}/req", '{"a": "ü"}'.encode(), 1, props)
        msg = sub.message()
        assert (msg.topic, msg.payload, msg.qos) == (f"dev1/{u}/req", '{"a": "ü"}'.encode(), 1)
        got = msg.properties
        assert got is not None
        assert got.UserProperty == [("k", "v1"), ("k", "v2"), ("ключ", "значение"), ("emoji", "🚀")]
        assert got.ContentType == "application/json; charset=utf-8"
        assert got.ResponseTopic == f"dev1/{u}/reply"
        assert got.CorrelationData == bytes(range(256))
        assert got.PayloadFormatIndicator == 1
        assert got.MessageExpiryInterval in (3599, 3600)  # remaining lifetime, counted by the broker
    finally:
        sub.stop()
        pub.stop()


@pytest.mark.parametrize("version", [4, 5])
def test_paho_wrong_password_is_not_authorized(proxy: GatewayProcess, version: int) -> None:
    c = Paho(version, password="wrong")
    try:
        reason = c.connect(proxy.port)
        assert reason == "Not authorized"
        assert reason.value == 135  # paho maps the 3.1.1 return code 5 to this reason code too
        assert c.session_present is False
        # the raw CONNACK code paho logged: 5 on 3.1.1, 135 (0x87) on 5
        expected = "Received CONNACK (0, 5)" if version == 4 else "Received CONNACK (0, Not authorized)"
        assert any(line.startswith(expected) for line in c.log), c.log
    finally:
        c.stop()


def test_paho_v311_session_resumption(proxy: GatewayProcess, broker: Mosquitto) -> None:
    u = uid()
    cid = f"persist-{u}"
    first = Paho(4, cid, clean_session=False)
    try:
        first.connect(proxy.port)
        assert [c.value for c in first.subscribe(f"dev1/{u}/#", 1)] == [1]
    finally:
        first.stop()
    broker.wait_dropped(cid)
    direct = RawClient(broker.port, 4)
    assert direct.connect(f"pub-{u}").reason_code == 0
    direct.publish(f"dev1/{u}/offline", b"queued while away", qos=1)
    direct.disconnect()
    again = Paho(4, cid, clean_session=False)
    try:
        assert again.connect(proxy.port) == "Success"
        assert again.session_present is True
        msg = again.message()
        assert (msg.topic, msg.payload, msg.qos) == (f"dev1/{u}/offline", b"queued while away", 1)
    finally:
        again.stop()
    # clean it up: a clean session ends the broker's copy (and shows the flag is forwarded both ways)
    gone = Paho(4, cid, clean_session=True)
    try:
        assert gone.connect(proxy.port) == "Success"
        assert gone.session_present is False
    finally:
        gone.stop()


def test_paho_v5_session_resumption(proxy: GatewayProcess, broker: Mosquitto) -> None:
    u = uid()
    cid = f"persist5-{u}"
    expiry = Properties(PacketTypes.CONNECT)
    expiry.SessionExpiryInterval = 300
    first = Paho(5, cid)
    try:
        assert first.connect(proxy.port, clean_start=True, properties=expiry) == "Success"
        assert first.session_present is False
        assert [c.value for c in first.subscribe(f"dev1/{u}/#", 1)] == [1]
    finally:
        first.stop()
    broker.wait_dropped(cid)
    direct = RawClient(broker.port, 5)
    assert direct.connect(f"pub-{u}").reason_code == 0
    direct.publish(f"dev1/{u}/offline", b"queued while away", qos=1)
    direct.disconnect()
    again = Paho(5, cid)
    try:
        assert again.connect(proxy.port, clean_start=False, properties=expiry) == "Success"
        assert again.session_present is True
        msg = again.message()
        assert (msg.topic, msg.payload, msg.qos) == (f"dev1/{u}/offline", b"queued while away", 1)
    finally:
        again.stop()
    # positive control for the expiry property: without it (expiry 0) the session is not kept
    short = Paho(5, f"short-{u}")
    try:
        assert short.connect(proxy.port, clean_start=True) == "Success"
        short.subscribe(f"dev1/{u}/#", 1)
    finally:
        short.stop()
    broker.wait_dropped(f"short-{u}")
    back = Paho(5, f"short-{u}")
    try:
        assert back.connect(proxy.port, clean_start=False) == "Success"
        assert back.session_present is False
    finally:
        back.stop()
    end = Paho(5, cid)
    try:
        assert end.connect(proxy.port, clean_start=True) == "Success"
    finally:
        end.stop()


@pytest.mark.parametrize("version", [4, 5])
def test_keepalive_pings_pass_through_and_keep_the_session(
    proxy: GatewayProcess, broker: Mosquitto, version: int
) -> None:
    """keepalive=2: PINGREQ gets PINGRESP through the proxy, and pinging keeps the connection past the
    1.5 x keepalive limit while a silent twin is dropped. The proxy enforces the keepalive itself
    (keepalive_factor 1.5, MQTT 5: DISCONNECT 0x8D) and the broker never had to."""
    u = uid()
    pinger = RawClient(proxy.port, version)
    silent = RawClient(proxy.port, version)
    assert pinger.connect(f"ping-{u}", "dev1", "pw1", keepalive=2).reason_code == 0
    assert silent.connect(f"silent-{u}", "dev1", "pw1", keepalive=2).reason_code == 0
    assert pinger.subscribe(f"dev1/{u}/#", qos=1).reason_codes == [1]
    silent_closed = gevent.spawn(silent.closed_within, 15.0)
    pings = 0
    while not silent_closed.ready():
        pinger.send(Pingreq())
        pinger.expect(Pingresp)
        pings += 1
        gevent.sleep(0.5)
    assert silent_closed.value is True
    assert pings >= 2
    if version == 5:
        assert [p.reason_code for p in silent.inbox if isinstance(p, Disconnect)] == [0x8D]
    log = broker.log.read_text(errors="replace")
    assert f"Client silent-{u} closed its connection." in log  # the proxy dropped it, the broker saw it go
    assert f"Client ping-{u} has exceeded timeout" not in log
    direct = RawClient(broker.port, 4)
    assert direct.connect(f"pub-{u}").reason_code == 0
    direct.publish(f"dev1/{u}/alive", b"still here", qos=1)
    direct.disconnect()
    got = pinger.expect(Publish)
    assert (got.topic, got.payload) == (f"dev1/{u}/alive", b"still here")
    pinger.disconnect()
