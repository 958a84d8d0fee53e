"""Live revocation: SIGHUP reloads the users; live sessions get a narrower grant or are disconnected."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from ferryman.protocols.mqtt.packets import Disconnect, Publish
from tests.rawclient import RawClient
from tests.servers import GatewayProcess, Mosquitto

CONFIG = """
[metrics]
address = ""
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{{port}}"
target = "tcp://127.0.0.1:{broker}"
[auth]
handler = "static"
{users}
"""
DEV1_WIDE = """
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#", "public/#"]
"""
DEV1_NARROW = DEV1_WIDE.replace('subscribe = ["dev1/#", "public/#"]', 'subscribe = ["dev1/#"]')
OTHER = """
[[auth.users]]
username = "other"
password = "pw"
"""


def wait_log(gw: GatewayProcess, needle: str, count: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.stderr().count(needle) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged {count}x:\n{gw.stderr()[-2000:]}")


@pytest.mark.parametrize("version", [4, 5])
def test_narrowed_grant_stops_delivery_of_revoked_topics(
    gateway_factory: object, broker: Mosquitto, version: int
) -> None:
    t = uuid.uuid4().hex[:8]
    gw: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port, users=DEV1_WIDE))  # type: ignore[operator]
    c = RawClient(gw.port, version)
    assert c.connect(f"r-{t}", "dev1", "pw1").reason_code == 0
    assert c.subscribe(f"public/{t}", f"dev1/{t}", qos=1).reason_codes == [1, 1]
    pub = RawClient(broker.port, 5)
    assert pub.connect(f"pub-{t}").reason_code == 0
    pub.publish(f"public/{t}", b"before", qos=1)
    assert c.expect(Publish).payload == b"before"

    gw.rewrite_config(CONFIG.format(broker=broker.port, users=DEV1_NARROW))
    gw.send_signal(signal.SIGHUP)
    wait_log(gw, "new grant for")

    pub.publish(f"public/{t}", b"revoked", qos=1)  # still subscribed at the broker, no longer granted
    pub.publish(f"dev1/{t}", b"allowed", qos=1)
    got = c.drain(1.0)
    payloads = [p.payload for p in got if isinstance(p, Publish)]
    assert payloads == [b"allowed"]  # positive control arrives, the revoked topic does not
    # the session is alive and still works both ways
    assert c.publish(f"dev1/{t}/up", b"x", qos=1).reason_code in (0, 0x10)
    c.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", [4, 5])
def test_removed_user_is_disconnected(gateway_factory: object, broker: Mosquitto, version: int) -> None:
    gw: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port, users=DEV1_WIDE))  # type: ignore[operator]
    c = RawClient(gw.port, version)
    assert c.connect(uuid.uuid4().hex[:8], "dev1", "pw1").reason_code == 0
    gw.rewrite_config(CONFIG.format(broker=broker.port, users=OTHER))
    gw.send_signal(signal.SIGHUP)
    assert c.closed_within(10)
    if version == 5:
        assert any(isinstance(p, Disconnect) and p.reason_code == 0x87 for p in c.inbox)
    # and cannot come back
    assert RawClient(gw.port, version).connect("again", "dev1", "pw1").reason_code == (
        0x87 if version == 5 else 5
    )


def test_bad_settings_on_sighup_keep_the_old_ones(gateway_factory: object, broker: Mosquitto) -> None:
    gw: GatewayProcess = gateway_factory(CONFIG.format(broker=broker.port, users=DEV1_WIDE))  # type: ignore[operator]
    c = RawClient(gw.port, 5)
    assert c.connect("keep", "dev1", "pw1").reason_code == 0
    gw.rewrite_config('[log]\nlevel = "loud"\n')
    gw.send_signal(signal.SIGHUP)
    wait_log(gw, "settings not reloaded")
    assert "log.level" in gw.stderr()
    assert c.publish("dev1/still", b"ok", qos=1).reason_code in (0, 0x10)
    c.disconnect()
