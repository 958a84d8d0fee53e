"""CoAP -> MQTT mode from outside: ``ferryman run`` with a ``coap`` listener (``target = "mqtt"``), libcoap's
``coap-client-notls`` as the independent CoAP peer, mosquitto, ``mosquitto_sub`` and ``mosquitto_pub`` on
the MQTT side. The broker logs (un)subscriptions so the tests can see the bridge's MQTT session follow the
CoAP observations."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.http_support import Subscriber
from tests.servers import GatewayProcess, Mosquitto

CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{{metrics_port}}"

[[listener]]
name = "coap"
protocol = "coap"
address = "127.0.0.1:{{port}}"
target = "mqtt"
max_packet_size = 8192
connect_timeout = 3.0

[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["sensors/#", "dev1/#"]
subscribe = ["sensors/#", "dev1/#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "{client_id}"
"""

_LINE = re.compile(r"v:1 t:(CON|NON|ACK|RST) c:(\S+) i:([0-9a-f]+) \{([0-9a-f]*)\}.*?(?: :: '(.*)')?$")


@dataclass
class Exchange:
    """What coap-client sent and got (parsed from its ``-v 7`` trace)."""

    request: tuple[str, str, str, str]  # type, code, message id, token
    responses: list[tuple[str, str, str, str, str]]  # type, code, mid, token, payload
    output: str

    @property
    def code(self) -> str:
        return self.responses[-1][1]

    @property
    def last(self) -> tuple[str, str, str, str, str]:
        return self.responses[-1]


def coap(*args: str, timeout: float = 15) -> Exchange:
    proc = subprocess.run(
        ["coap-client-notls", "-v", "7", "-B", "5", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    request: tuple[str, str, str, str] | None = None
    responses = []
    for line in out.splitlines():
        m = _LINE.search(line)
        if m is None:
            continue
        kind, code, mid, token, payload = m.groups()
        if code[0].isalpha() and request is None:
            request = (kind, code, mid, token)
        elif code[0].isdigit():
            responses.append((kind, code, mid, token, payload or ""))
    assert request is not None and responses, out
    return Exchange(request, responses, out)


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    extra = "log_type subscribe\nlog_type unsubscribe\n"
    with Mosquitto(tmp_path_factory.mktemp("coap-mosquitto"), extra=extra) as m:
        yield m


@pytest.fixture(scope="module")
def gw(mqtt_broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    client_id = f"coap-bridge-{uuid.uuid4().hex[:6]}"
    config = CONFIG.format(broker=mqtt_broker.port, client_id=client_id)
    gateway = GatewayProcess(tmp_path_factory.mktemp("coap-gw"), config)
    gateway.client_id = client_id  # type: ignore[attr-defined]
    gateway.ports = [gateway.metrics_port]  # UDP cannot be waited for; metrics come up after the listeners
    gateway.start()
    yield gateway
    rc, err = gateway.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


def uri(gw: GatewayProcess, path: str, auth: str | None = "dev1:pw1") -> str:
    query = f"?auth={auth}" if auth is not None else ""
    return f"coap://127.0.0.1:{gw.port}/{path}{query}"


def broker_log(broker: Mosquitto) -> str:
    return broker.log.read_text(errors="replace")


def wait_log(broker: Mosquitto, pattern: str, count: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, broker_log(broker), re.M)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"broker never logged {pattern!r} x{count}:\n{broker_log(broker)[-2000:]}")


# -- publish ---------------------------------------------------------------------------------------------


def test_acceptance_post_is_204_and_published(gw: GatewayProcess, mqtt_broker: Mosquitto) -> None:
    sub = Subscriber(mqtt_broker.port, "sensors/#").start()
    ex = coap("-m", "post", "-e", "21.5", uri(gw, "sensors/k1/temp"))
    assert ex.code == "2.04"
    kind, _, mid, token, _ = ex.last
    assert (kind, mid, token) == ("ACK", ex.request[2], ex.request[3])  # piggybacked on the request
    assert sub.messages() == ["1 0 sensors/k1/temp 21.5"]


def test_put_publishes_with_the_qos_and_retain_asked(gw: GatewayProcess, mqtt_broker: Mosquitto) -> None:
    sub = Subscriber(mqtt_broker.port, "dev1/put").start()
    assert coap("-m", "put", "-e", "on", uri(gw, "dev1/put") + "&qos=0&retain=1").code == "2.04"
    assert sub.messages() == ["0 0 dev1/put on"]  # retain is 0 for a live subscriber in MQTT
    assert coap("-m", "put", "-e", "", uri(gw, "dev1/put") + "&retain=1").code == "2.04"  # clears it
    assert coap("-m", "put", "-e", "x", uri(gw, "dev1/put") + "&qos=7").code == "4.00"


def test_refusals_are_piggybacked_and_publish_nothing(gw: GatewayProcess, mqtt_broker: Mosquitto) -> None:
    sub = Subscriber(mqtt_broker.port, "#", count=1).start()
    cases = [
        (uri(gw, "sensors/k1/temp", auth=None), "4.01", "credentials required"),
        (uri(gw, "sensors/k1/temp", auth="dev1:wrong"), "4.01", "credentials refused"),  # not which
        (uri(gw, "sensors/k1/temp", auth="justatoken"), "4.01", ""),
        (uri(gw, "sensors/k1/temp", auth=""), "4.01", "empty auth"),
        (uri(gw, "other/topic"), "4.03", "not allowed: other/topic"),
    ]
    for target, code, why in cases:
        ex = coap("-m", "post", "-e", "secret", target)
        assert ex.code == code, ex.output
        kind, _, mid, token, payload = ex.last
        assert (kind, mid, token) == ("ACK", ex.request[2], ex.request[3])
        assert why in payload
    # A marker after the refused ones: the subscriber's only message must be it.
    assert coap("-m", "post", "-e", "marker", uri(gw, "sensors/marker")).code == "2.04"
    assert sub.messages() == ["1 0 sensors/marker marker"]


def test_other_methods_are_405(gw: GatewayProcess) -> None:
    assert coap("-m", "delete", uri(gw, "sensors/x")).code == "4.05"
    ex = coap("-m", "get", uri(gw, "sensors/x"))
    assert ex.code == "4.05" and "Observe" in ex.last[4]


def test_blockwise_4k_payload_arrives_whole(
    gw: GatewayProcess, mqtt_broker: Mosquitto, tmp_path: Path
) -> None:
    body = (uuid.uuid4().hex * 128)[:4096]
    (tmp_path / "big").write_text(body)
    sub = Subscriber(mqtt_broker.port, "sensors/big").start()
    ex = coap("-b", "64", "-m", "post", "-f", str(tmp_path / "big"), uri(gw, "sensors/big"))
    assert ex.code == "2.04"
    assert sum(1 for r in ex.responses if r[1] == "2.31") == 4096 // 64 - 1  # Continue for every block
    assert sub.messages() == [f"1 0 sensors/big {body}"]


def test_payload_over_max_packet_size_is_413(gw: GatewayProcess, tmp_path: Path) -> None:
    (tmp_path / "huge").write_text("x" * 9000)
    ex = coap("-b", "1024", "-m", "post", "-f", str(tmp_path / "huge"), uri(gw, "sensors/huge"))
    assert ex.code == "4.13"


# -- observe ---------------------------------------------------------------------------------------------


def _observe(gw: GatewayProcess, path: str, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["coap-client-notls", "-v", "7", "-s", str(seconds), "-m", "get", uri(gw, path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _notifications(output: str) -> list[str]:
    return [m.group(5) or "" for m in map(_LINE.search, output.splitlines()) if m and m.group(2) == "2.05"]


def test_observe_gets_mqtt_messages_and_leaving_unsubscribes(
    gw: GatewayProcess, mqtt_broker: Mosquitto
) -> None:
    client_id = gw.client_id  # type: ignore[attr-defined]
    obs = _observe(gw, "dev1/%2B/obs", 4)
    wait_log(mqtt_broker, rf"{client_id} 1 dev1/\+/obs$")  # mosquitto's log of a SUBSCRIBE
    for n in (1, 2):
        subprocess.run(["mosquitto_pub", "-p", str(mqtt_broker.port), "-t", f"dev1/{n}/obs", "-m", f"m{n}"])
    subprocess.run(["mosquitto_pub", "-p", str(mqtt_broker.port), "-t", "dev1/x/other", "-m", "no"])
    out, _ = obs.communicate(timeout=15)
    assert _notifications(out) == ["", "m1", "m2"]  # the registration's answer, then one per message
    wait_log(mqtt_broker, rf"{client_id} dev1/\+/obs$")  # and of the UNSUBSCRIBE


def test_observe_refusals(gw: GatewayProcess) -> None:
    assert coap("-s", "1", "-m", "get", uri(gw, "other/#")).code == "4.03"
    assert coap("-s", "1", "-m", "get", uri(gw, "sensors/#", auth=None)).code == "4.01"
    assert coap("-s", "1", "-m", "get", uri(gw, "sensors/a%23")).code == "4.00"


@pytest.mark.slow
def test_observation_outlives_30s_of_silence(gw: GatewayProcess, mqtt_broker: Mosquitto) -> None:
    """mGate drops observations after 30 s without a notification; here they last as long as the client."""
    client_id = gw.client_id  # type: ignore[attr-defined]
    obs = _observe(gw, "sensors/sparse", 40)
    wait_log(mqtt_broker, rf"{client_id} 1 sensors/sparse$")
    subprocess.run(["mosquitto_pub", "-p", str(mqtt_broker.port), "-t", "sensors/sparse", "-m", "early"])
    time.sleep(34)
    subprocess.run(["mosquitto_pub", "-p", str(mqtt_broker.port), "-t", "sensors/sparse", "-m", "late"])
    out, _ = obs.communicate(timeout=30)
    assert _notifications(out) == ["", "early", "late"]
