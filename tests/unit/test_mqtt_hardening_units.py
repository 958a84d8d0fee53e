"""Issue 11, MQTT: the pieces behind tests/integration/test_mqtt_hardening.py in isolation (element caps in
the codec, the client id binding). The handler's override of the binding, on a gateway and mosquitto, is in
tests/integration/test_client_id_takeover.py."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from ferryman import Grant
from ferryman.actors.client_ids import ClientIdBinding, identity_of, session_lifetime
from ferryman.actors.contracts import CombinedGrant
from ferryman.protocols.mqtt import codec
from ferryman.protocols.mqtt.errors import TooManyElements
from ferryman.protocols.mqtt.packets import (
    Connect,
    Disconnect,
    Publish,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
)

USER = 0x26
SUBSCRIPTION_ID = 0x0B
CAPS = codec.Limits(user_properties=64, topic_filters=128)


def body(packet: Any, version: int = 5) -> tuple[int, bytes]:
    raw = codec.encode(packet, version)
    header = 2
    while raw[header - 1] & 0x80:
        header += 1
    return raw[0], raw[header:]


def users(n: int) -> list[tuple[int, object]]:
    return [(USER, ("k", "v"))] * n


# ------------------------------------------------------------------------------------- element caps
@pytest.mark.parametrize("n", [0, 1, 64])
def test_packets_at_the_cap_decode_as_before(n: int) -> None:
    for packet in (
        Connect(client_id="c", protocol_level=5, properties=users(n)),
        Publish("t", b"x", properties=users(n)),
        Subscribe(1, [Subscription("a", 0)], users(n)),
        Disconnect(0, users(n)),
    ):
        first, data = body(packet)
        assert codec.decode(first, data, 5, CAPS) == codec.decode(first, data, 5)


@pytest.mark.parametrize(
    "packet",
    [
        Connect(client_id="c", protocol_level=5, properties=users(65)),
        Publish("t", b"x", properties=users(65)),
        Publish("t", b"x", properties=[(SUBSCRIPTION_ID, i + 1) for i in range(65)]),
        Subscribe(1, [Subscription("a", 0)], users(65)),
        Unsubscribe(1, ["a"], users(65)),
        Disconnect(0, users(65)),
        Subscribe(1, [Subscription(f"a/{i}", 0) for i in range(129)]),
        Unsubscribe(1, [f"a/{i}" for i in range(129)]),
    ],
    ids=["connect", "publish", "publish-sub-ids", "subscribe-props", "unsubscribe-props", "disconnect",
         "subscribe-filters", "unsubscribe-filters"],
)  # fmt: skip
def test_one_element_past_a_cap_is_0x95(packet: Any) -> None:
    first, data = body(packet)
    codec.decode(first, data, 5)  # valid, and decodable without caps
    with pytest.raises(TooManyElements) as err:
        codec.decode(first, data, 5, CAPS)
    assert err.value.reason_code == 0x95


def test_connect_and_will_user_properties_share_one_cap() -> None:
    will = Will("w", b"", properties=users(40))
    first, data = body(Connect(client_id="c", protocol_level=5, properties=users(24), will=will))
    codec.decode(first, data, 5, CAPS)
    first, data = body(Connect(client_id="c", protocol_level=5, properties=users(25), will=will))
    with pytest.raises(TooManyElements):
        codec.decode(first, data, 5, CAPS)


def test_v311_subscribe_filters_are_capped() -> None:
    first, data = body(Subscribe(1, [Subscription(f"a/{i}", 0) for i in range(129)]), 4)
    with pytest.raises(TooManyElements):
        codec.decode(first, data, 4, CAPS)


def test_a_capped_decode_costs_what_the_cap_costs() -> None:
    """210,000 user properties: decoding stops at the 65th, so it takes about what a small packet takes."""
    heavy = Publish("t", b"x", properties=users(210_000))
    first, data = body(heavy)
    small_first, small = body(Publish("t", b"x", properties=users(64)))
    t0 = time.perf_counter()
    for _ in range(20):
        codec.decode(small_first, small, 5, CAPS)
    small_cost = (time.perf_counter() - t0) / 20
    t0 = time.perf_counter()
    with pytest.raises(TooManyElements):
        codec.decode(first, data, 5, CAPS)
    heavy_cost = time.perf_counter() - t0
    assert heavy_cost < 50 * small_cost + 0.01  # vs. about 2,000 x uncapped


# -------------------------------------------------------------------------------- client id binding
class Conn:
    def __init__(self) -> None:
        self.displaced = 0

    def taken_over(self) -> None:
        self.displaced += 1


def test_binding_refuses_other_identities_and_reserved_ids() -> None:
    b = ClientIdBinding("identity", reserved=["bridge"])
    one, two = Conn(), Conn()
    assert b.claim("bridge", "user:admin", one) == "reserved"
    assert b.claim("bridge", "user:admin", one, may_take=True) == "reserved"
    assert b.claim("id", "user:dev1", one) == ""
    assert b.claim("id", "user:dev2", two) == "bound"
    assert one.displaced == 0
    assert b.claim("id", "user:dev1", two) == ""  # the same identity again: the old holder is told
    assert one.displaced == 1
    assert b.claim("", "user:dev2", two) == ""  # the broker assigns one: nothing to bind


def test_binding_may_be_taken_when_the_grant_says_so() -> None:
    b = ClientIdBinding()
    one, two, three = Conn(), Conn(), Conn()
    assert b.claim("id", "user:dev1", one) == ""
    assert b.claim("id", "user:ops", two, may_take=True) == ""
    assert one.displaced == 1
    assert b.claim("id", "user:dev1", three) == "bound"  # it is ops's now


def test_binding_mode_none_binds_nothing_but_still_tells_the_displaced() -> None:
    b = ClientIdBinding("none", reserved=["bridge"])
    one, two = Conn(), Conn()
    assert b.claim("id", "user:dev1", one) == ""
    assert b.claim("id", "user:dev2", two) == ""
    assert one.displaced == 1
    assert b.claim("bridge", "user:dev2", two) == "reserved"


def test_binding_outlives_the_connection_as_long_as_the_broker_keeps_the_session() -> None:
    b = ClientIdBinding()
    clean, persistent, expiring, never = Conn(), Conn(), Conn(), Conn()
    b.claim("clean", "user:a", clean)
    b.release("clean", clean, 0.0)  # no session left on the broker: free
    assert b.claim("clean", "user:b", Conn()) == ""
    b.claim("persistent", "user:a", persistent)
    b.release("persistent", persistent, math.inf)
    assert b.claim("persistent", "user:b", Conn()) == "bound"
    b.claim("expiring", "user:a", expiring)
    b.release("expiring", expiring, 0.05)
    assert b.claim("expiring", "user:b", Conn()) == "bound"
    time.sleep(0.1)
    assert b.claim("expiring", "user:b", Conn()) == ""
    # The broker never accepted it: a first claim is forgotten...
    b.claim("never", "user:a", never)
    b.release("never", never, None)
    assert b.claim("never", "user:b", Conn()) == ""
    # ... and a claim of a bound id leaves the binding as it was.
    again = Conn()
    assert b.claim("persistent", "user:a", again) == ""
    b.release("persistent", again, None)
    assert b.claim("persistent", "user:b", Conn()) == "bound"


def test_offline_bindings_are_bounded() -> None:
    b = ClientIdBinding(max_offline=3)
    for i in range(10):
        c = Conn()
        b.claim(f"id{i}", "user:a", c)
        b.release(f"id{i}", c, math.inf)
    assert len(b) == 3
    assert b.claim("id0", "user:b", Conn()) == ""  # the oldest were forgotten
    assert b.claim("id9", "user:b", Conn()) == "bound"


def test_identities_and_lifetimes() -> None:
    assert identity_of("dev1", None) == "user:dev1"
    assert identity_of(None, "dev1.example") == "cert:dev1.example"
    assert identity_of("dev1", "cert-of-someone") == "user:dev1"
    assert identity_of(None, None) == identity_of("", None) == ""
    assert session_lifetime(False, True, None) == 0
    assert session_lifetime(False, False, None) == math.inf
    assert session_lifetime(True, False, None) == 0
    assert session_lifetime(True, False, 300) == 300
    assert session_lifetime(True, True, 0xFFFFFFFF) == math.inf


def test_combined_grant_takes_client_ids_only_when_every_part_does() -> None:
    yes = Grant(["#"], ["#"], take_client_id=True)
    no = Grant(["#"], ["#"])
    assert CombinedGrant([yes, yes]).take_client_id
    assert not CombinedGrant([yes, no]).take_client_id
    assert not Grant().take_client_id
