"""Every refusal of the handler API, answered in MQTT's own terms, with nothing reaching the broker."""

from __future__ import annotations

import pytest

from ferryman.protocols.mqtt.packets import Disconnect, Puback, Publish, Pubrec, Will
from tests.rawclient import RawClient, spy
from tests.servers import GatewayProcess, Mosquitto, uid


def broker_saw_client(broker: Mosquitto, client_id: str) -> bool:
    return client_id in broker.log.read_text(errors="replace")


@pytest.mark.parametrize(("version", "code"), [(4, 5), (5, 0x87)])
def test_wrong_password_gets_not_authorized_and_broker_never_sees_client(
    proxy: GatewayProcess, broker: Mosquitto, version: int, code: int
) -> None:
    cid = f"intruder-{uid()}"
    c = RawClient(proxy.port, version)
    assert c.connect(cid, "dev1", "wrong").reason_code == code
    assert c.closed_within(2)
    good = f"good-{uid()}"
    ok = RawClient(proxy.port, version)
    assert ok.connect(good, "dev1", "pw1").reason_code == 0
    ok.disconnect()
    # positive control: the broker logs clients it sees, and it logged the good one
    for _ in range(50):
        if broker_saw_client(broker, good):
            break
        import time

        time.sleep(0.05)
    assert broker_saw_client(broker, good)
    assert not broker_saw_client(broker, cid)


@pytest.mark.parametrize(("version", "code"), [(4, 5), (5, 0x87)])
def test_unknown_user_and_missing_credentials_refused(proxy: GatewayProcess, version: int, code: int) -> None:
    assert RawClient(proxy.port, version).connect(uid(), "nobody", "x").reason_code == code
    assert RawClient(proxy.port, version).connect(uid()).reason_code == code


@pytest.mark.parametrize(("version", "code"), [(4, 5), (5, 0x87)])
def test_refused_will_refuses_connect(
    proxy: GatewayProcess, broker: Mosquitto, version: int, code: int
) -> None:
    cid = f"badwill-{uid()}"
    will = Will("other/will", b"bye", qos=0)
    c = RawClient(proxy.port, version)
    assert c.connect(cid, "dev1", "pw1", will=will).reason_code == code
    assert not broker_saw_client(broker, cid)
    ok = RawClient(proxy.port, version)
    assert ok.connect(uid(), "dev1", "pw1", will=Will("dev1/will", b"bye")).reason_code == 0
    ok.disconnect()


@pytest.mark.parametrize(("version", "refused"), [(4, 0x80), (5, 0x87)])
def test_suback_refuses_per_filter_and_keeps_session(
    proxy: GatewayProcess, broker: Mosquitto, version: int, refused: int
) -> None:
    t = uid()
    c = RawClient(proxy.port, version)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    suback = c.subscribe(f"dev1/{t}/#", "secret/#", f"public/{t}", "#", qos=1)
    assert suback.reason_codes == [1, refused, 1, refused]
    # all refused: answered by the proxy, session kept
    assert c.subscribe("secret/a", "+/x").reason_codes == [refused, refused]
    # the session still works: the granted subscriptions deliver
    pub = RawClient(broker.port, 5)
    pub.connect(uid())
    pub.publish(f"dev1/{t}/x", b"one", qos=1)
    pub.publish(f"public/{t}", b"two", qos=1)
    got = [c.expect(Publish), c.expect(Publish)]
    assert sorted(p.payload for p in got) == [b"one", b"two"]
    pub.disconnect()
    c.disconnect()


def test_refused_publish_v5_qos1_gets_puback_0x87_and_never_reaches_broker(
    proxy: GatewayProcess, broker: Mosquitto
) -> None:
    t = uid()
    s = spy(broker.port, f"+/{t}/#")
    c = RawClient(proxy.port, 5)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    assert c.publish(f"other/{t}/x", b"no", qos=1).reason_code == 0x87
    rec = c.publish(f"other/{t}/y", b"no", qos=2)
    assert isinstance(rec, Pubrec) and rec.reason_code == 0x87
    c.publish(f"other/{t}/z", b"no", qos=0)
    assert c.publish(f"dev1/{t}/ok", b"yes", qos=1).reason_code in (0, 0x10)
    seen = s.expect(Publish)
    assert (seen.topic, seen.payload) == (f"dev1/{t}/ok", b"yes")
    assert s.drain(0.5) == []
    c.disconnect()
    s.disconnect()


def test_refused_publish_v311_is_acknowledged_and_dropped(proxy: GatewayProcess, broker: Mosquitto) -> None:
    """3.1.1 has no refusal code for PUBLISH: the default (refused_publish_v3 = "ack") acknowledges as the
    QoS requires (PUBACK; PUBREC/PUBREL/PUBCOMP answered by the proxy) and drops the message."""
    t = uid()
    s = spy(broker.port, f"+/{t}/#")
    c = RawClient(proxy.port, 4)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    assert isinstance(c.publish(f"other/{t}/1", b"no", qos=1), Puback)
    c.publish(f"other/{t}/2", b"no", qos=2)  # full QoS 2 flow completes against the proxy
    c.publish(f"dev1/{t}/ok", b"yes", qos=1)
    seen = s.expect(Publish)
    assert (seen.topic, seen.payload) == (f"dev1/{t}/ok", b"yes")
    assert s.drain(0.5) == []
    c.disconnect()
    s.disconnect()


def test_refused_publish_v311_disconnect_mode_closes(proxy: GatewayProcess, broker: Mosquitto) -> None:
    t = uid()
    s = spy(broker.port, f"+/{t}/#")
    c = RawClient(proxy.ports[1], 4)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    c.send(Publish(f"other/{t}/x", b"no", qos=1, packet_id=1))
    assert c.closed_within(3)
    assert not any(isinstance(p, Puback) for p in c.inbox)
    assert s.drain(0.5) == []
    s.disconnect()


def test_v5_refused_publish_with_topic_alias_is_resent_in_full(
    proxy: GatewayProcess, broker: Mosquitto
) -> None:
    """A refused PUBLISH that set a topic alias never reached the broker, so the alias means nothing there:
    the next allowed use of that alias must reach the broker with its topic."""
    t = uid()
    s = spy(broker.port, f"dev1/{t}/#")
    c = RawClient(proxy.port, 5)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    alias = [(35, 1)]
    assert c.publish(f"dev1/{t}/a", b"1", qos=1, properties=list(alias)).reason_code in (0, 0x10)
    assert c.publish("", b"2", qos=1, properties=list(alias)).reason_code in (0, 0x10)
    assert c.publish(f"other/{t}", b"no", qos=1, properties=[(35, 2)]).reason_code == 0x87
    # alias 2 now maps to a refused topic: using it alone is refused too
    assert c.publish("", b"no", qos=1, properties=[(35, 2)]).reason_code == 0x87
    got = [s.expect(Publish), s.expect(Publish)]
    assert [(p.topic, p.payload) for p in got] == [(f"dev1/{t}/a", b"1"), (f"dev1/{t}/a", b"2")]
    c.disconnect()
    s.disconnect()


def test_percent_u_and_percent_c_patterns(proxy: GatewayProcess, broker: Mosquitto) -> None:
    t = uid()
    s = spy(broker.port, f"dev2/+/{t}")
    c = RawClient(proxy.port, 5)
    assert c.connect("sensor7", "dev2", "pw2").reason_code == 0
    assert c.publish(f"dev2/sensor7/{t}", b"mine", qos=1).reason_code in (0, 0x10)
    assert c.publish(f"dev2/sensor8/{t}", b"not mine", qos=1).reason_code == 0x87
    assert s.expect(Publish).topic == f"dev2/sensor7/{t}"
    assert s.drain(0.3) == []
    # a client id with a wildcard never fills %c
    bad = RawClient(proxy.port, 5)
    assert bad.connect("#", "dev2", "pw2").reason_code == 0
    assert bad.publish("dev2/x/y", b"x", qos=1).reason_code == 0x87
    bad.close()
    c.disconnect()
    s.disconnect()


def test_broker_down_gets_server_unavailable(gateway_factory: object, tmp_path: object) -> None:
    from tests.servers import free_port

    dead = free_port()
    gw = gateway_factory(  # type: ignore[operator]
        f"""
[metrics]
address = ""
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{{port}}"
target = "tcp://127.0.0.1:{dead}"
[auth]
handler = "allow-all"
"""
    )
    assert RawClient(gw.port, 4).connect(uid()).reason_code == 3
    assert RawClient(gw.port, 5).connect(uid()).reason_code == 0x88


def test_kicked_v5_client_gets_disconnect_reason(proxy: GatewayProcess) -> None:
    """Malformed input after CONNECT: MQTT 5 clients are told why (0x81) before the close."""
    c = RawClient(proxy.port, 5)
    assert c.connect(uid(), "dev1", "pw1").reason_code == 0
    c.send_raw(b"\x36\x04\x00\x01ab")  # PUBLISH with QoS 3
    assert c.closed_within(3)
    assert any(isinstance(p, Disconnect) and p.reason_code == 0x81 for p in c.inbox)
