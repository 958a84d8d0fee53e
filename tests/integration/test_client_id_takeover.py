"""Issue 11, MQTT: a handler's grant may take a client id bound to another identity (the override of the
client id binding), on a gateway run as a library in front of mosquitto. The binding itself is unit-tested in
tests/unit/test_mqtt_hardening_units.py."""

from __future__ import annotations

from pathlib import Path

from ferryman import Gateway, Grant, HandlerActor, Refusal, RefusalCode, Session
from ferryman.protocols.mqtt.packets import Disconnect, Pingreq, Pingresp
from ferryman.wiring import HANDLERS, LISTENERS, load_settings
from tests.rawclient import RawClient
from tests.servers import Mosquitto, free_port, uid


# -------------------------------------------------------------- the handler's override, as a library
class Operators(HandlerActor):
    """Grants everything; user "ops" may take any client id (e.g. to evict a misbehaving device)."""

    def auth_connect(self, session: Session) -> Grant | Refusal:
        if session.username not in ("dev1", "dev2", "ops"):
            return Refusal(RefusalCode.NOT_AUTHORIZED)
        return Grant(["#"], ["#"], take_client_id=session.username == "ops")


def test_a_handler_grant_may_take_a_bound_client_id(broker: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "ops.toml"
    cfg.write_text(
        f"""
[metrics]
address = ""
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:{broker.port}"
[auth]
handler = "operators"
"""
    )
    gw = Gateway(load_settings(cfg), LISTENERS, {**HANDLERS, "operators": Operators})
    gw.start()
    try:
        cid = f"dev1-{uid()}"
        dev1 = RawClient(port, 5)
        assert dev1.connect(cid, "dev1").reason_code == 0
        assert RawClient(port, 5).connect(cid, "dev2").reason_code == 0x85
        ops = RawClient(port, 5)
        assert ops.connect(cid, "ops").reason_code == 0
        assert dev1.closed_within(5)
        assert [p.reason_code for p in dev1.inbox if isinstance(p, Disconnect)] == [0x8E]
        ops.send(Pingreq())
        assert isinstance(ops.recv(), Pingresp)
        ops.disconnect()
    finally:
        gw.stop()
