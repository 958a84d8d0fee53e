"""One owner for the state of a proxied MQTT connection (no servers, no sockets).

``ProxiedConnection`` (protocols/mqtt/connection.py) owns a ``DirectionState`` per direction and hands it
to the data plane (protocols/mqtt/dataplane.py); the connection's actors and the data plane use only public
members of the connection, and no module of the MQTT / WebSocket packages reads another object's private
attributes (bar the paho internals of the bridge's client, pinned separately).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ferryman.actors.contracts import Direction, Grant, Session
from ferryman.actors.metrics import Metrics
from ferryman.protocols.mqtt import codec, dataplane
from ferryman.protocols.mqtt.connection import ProxiedConnection
from ferryman.protocols.mqtt.context import ListenerContext
from ferryman.protocols.mqtt.dataplane import DirectionState, process_down, process_up
from ferryman.protocols.mqtt.framing import Framer
from ferryman.protocols.mqtt.limits import RateLimiter
from ferryman.protocols.mqtt.packets import Connack, Publish

PROTOCOLS = Path(__file__).resolve().parents[2] / "protocols"
#: Modules allowed to read private attributes of other objects, and why.
PRIVATE_ACCESS_ALLOWED = {"bridge_client.py": "paho-mqtt internals (the bridge's broker session)"}


class _Stream:
    def __init__(self) -> None:
        self.timeout: float | None = None

    def recv(self, bufsize: int, /) -> bytes:
        return b""

    def sendall(self, data: bytes, /) -> None:
        pass

    def settimeout(self, value: float | None, /) -> None:
        self.timeout = value

    def shutdown(self, how: int, /) -> None:
        pass

    def close(self) -> None:
        pass


class _Chain:
    wants_publish = wants_subscribe = wants_unsubscribe = False

    def __init__(self) -> None:
        self.connected: list[tuple[Session, Grant]] = []

    def on_connect(self, session: Session, grant: Grant) -> None:
        self.connected.append((session, grant))


class _Rewrite:
    def intercept(self, session: Session, packet: Any, direction: Direction) -> Any | None:
        return packet


def _connection(version: int = 5, **settings: Any) -> tuple[ProxiedConnection, _Chain, _Stream]:
    options = {"max_packet_size": 0, "keepalive_factor": 1.5, "refused_publish_v3": "drop", **settings}
    chain = _Chain()
    ctx = ListenerContext(
        "l1",
        SimpleNamespace(**options),
        chain,  # type: ignore[arg-type]  # the part of HandlerChain the connection uses here
        Metrics(),
        "127.0.0.1",
        1883,
        lambda t: _Stream(),
    )
    device = _Stream()
    conn = ProxiedConnection(ctx, device, ("127.0.0.1", 5000))
    conn.version = version
    conn.session = Session(
        id=1, listener="l1", protocol="mqtt", remote_addr=("127.0.0.1", 5000), protocol_version=version,
        client_id="c1", username=None, password=None, control=None,
    )  # fmt: skip
    return conn, chain, device


def _chunk(*packets: Any, version: int = 5) -> tuple[bytes, list[Any], int]:
    framer = Framer()
    buf, frames = framer.feed_runs(b"".join(codec.encode(p, version) for p in packets))
    return buf, frames, framer.last_runs


def test_the_connection_owns_one_state_per_direction() -> None:
    conn, _, _ = _connection(publish_rate=10.0)
    assert conn.up.direction is Direction.UP and conn.down.direction is Direction.DOWN
    assert conn.up is not conn.down and conn.up.counters is not conn.down.counters
    assert isinstance(conn.up.limiter, RateLimiter)  # the device's publish rate: uplink only
    assert conn.down.limiter is None
    assert _connection()[0].up.limiter is None  # no rate configured


def test_the_data_plane_keeps_its_state_in_the_state_it_is_handed() -> None:
    conn, _, _ = _connection()
    conn.set_grant(Grant.everything())
    buf, frames, runs = _chunk(Publish("a/b", b"x", qos=0, properties=[(35, 7)]))  # alias 7 -> a/b
    out, replies = process_up(conn, conn.up, buf, frames, runs)
    assert out == buf and replies == []
    assert conn.up.aliases == {7: "a/b"} and conn.down.aliases == {}
    assert conn.up.counters.counts[3] == 1 and conn.down.counters.counts[3] == 0

    buf, frames, runs = _chunk(Publish("c/d", b"y", qos=0, properties=[(35, 2)]))
    out, replies, close = process_down(conn, conn.down, buf, frames, runs)
    assert out == buf and replies == [] and close == ""
    assert conn.down.aliases == {2: "c/d"} and conn.up.aliases == {7: "a/b"}
    assert conn.down.counters.counts[3] == 1


def test_a_refused_publish_leaves_its_alias_unlearned_in_its_direction_only() -> None:
    conn, _, _ = _connection()
    conn.set_grant(Grant(("ok/#",), ("#",)))
    buf, frames, runs = _chunk(Publish("no/x", b"", qos=1, packet_id=5, properties=[(35, 3)]))
    out, replies = process_up(conn, conn.up, buf, frames, runs)
    assert out == b"" and len(replies) == 1  # PUBACK 0x87 from the proxy
    assert conn.up.unlearned == {3} and conn.down.unlearned == set()


def test_a_new_grant_forgets_allowed_topics_and_relearns_aliases_when_interceptors_change() -> None:
    conn, _, _ = _connection()
    conn.set_grant(Grant.everything())
    for state, alias in ((conn.up, 1), (conn.down, 2)):
        state.aliases[alias] = "t"
        state.known_topics.add(b"t")
    conn.set_grant(Grant(("#",), ("#",)))  # same interceptors (none): aliases stay learned
    assert conn.up.known_topics == set() == conn.down.known_topics
    assert conn.up.unlearned == set() == conn.down.unlearned
    conn.set_grant(Grant(("#",), ("#",), [_Rewrite()]))  # interceptors change topics: send in full again
    assert conn.up.unlearned == {1} and conn.down.unlearned == {2}


def test_aliases_are_not_relearned_on_311() -> None:
    conn, _, _ = _connection(version=4)
    conn.up.aliases[1] = "t"
    conn.set_grant(Grant(("#",), ("#",), [_Rewrite()]))
    assert conn.up.unlearned == set()


def test_the_brokers_connack_sets_its_limits_on_the_connection() -> None:
    conn, chain, device = _connection()
    conn.set_grant(Grant.everything())
    assert not conn.connected and conn.up.alias_max is None
    buf, frames, runs = _chunk(Connack(False, 0, [(19, 20), (34, 5)]))  # server keepalive, alias maximum
    out, _, close = process_down(conn, conn.down, buf, frames, runs)
    assert out == buf and close == ""
    assert conn.connected and conn.up.alias_max == 5 and conn.down.alias_max is None
    assert device.timeout == 30.0  # 20 s x keepalive_factor 1.5
    assert chain.connected == [(conn.session, conn.grant)]


def test_the_data_plane_protocol_names_public_members_only() -> None:
    body = ast.parse(inspect.getsource(dataplane.Connection)).body[0]
    assert isinstance(body, ast.ClassDef)
    members = [n.name for n in body.body if isinstance(n, ast.FunctionDef)]
    members += [
        n.target.id for n in body.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    ]
    assert len(members) > 5, "the Protocol lost its members: the check would be vacuous"
    assert [m for m in members if m.startswith("_")] == []
    conn, _, _ = _connection()
    assert [m for m in members if not hasattr(conn, m)] == []  # the connection has the data plane's shape


def _private_reads(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``, ``cls`` or ``super()``: another object's private field."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")) or node.attr.startswith("__"):
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
            continue
        found.append(f"{path.parent.name}/{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_mqtt_or_websocket_module_reads_another_objects_private_fields() -> None:
    files = sorted([*PROTOCOLS.joinpath("mqtt").glob("*.py"), *PROTOCOLS.joinpath("websocket").glob("*.py")])
    assert len(files) > 10
    found = [hit for f in files if f.name not in PRIVATE_ACCESS_ALLOWED for hit in _private_reads(f)]
    assert not found, "private fields read from outside their object:\n" + "\n".join(found)


def test_the_private_field_check_catches_one(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f(conn, self):\n    self._ok = conn._alias_up\n    super()._also_ok()\n")
    assert _private_reads(sample) == [f"{tmp_path.name}/m.py:2: conn._alias_up"]


def test_direction_state_alone() -> None:
    state = DirectionState(Direction.UP, _connection()[0].up.counters)
    state.aliases.update({1: "a", 2: "b"})
    state.known_topics.add(b"a")
    state.grant_changed(topics_may_change=False)
    assert state.known_topics == set() and state.unlearned == set()
    state.grant_changed(topics_may_change=True)
    assert state.unlearned == {1, 2}
