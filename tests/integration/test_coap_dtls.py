"""DTLS (``coaps``) with pre-shared keys from outside: ``ferryman run`` with coap listeners that have
``[listener.psk]`` (aiocoap's tinydtls_server), libcoap's ``coap-client-openssl -u <identity> -k <key>``
as the independent DTLS client, mosquitto and ``mosquitto_sub`` on the MQTT side, and libcoap's
``coap-server-notls`` as the target of the proxy-mode listener."""

from __future__ import annotations

import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferryman.protocols.coap.dtls import MAX_KEY_BYTES, psk_credentials
from ferryman.protocols.coap.listener import CoapListener
from ferryman.wiring import load_settings
from tests.coap_support import free_udp_ports, libcoap_server
from tests.http_support import Subscriber
from tests.servers import GatewayProcess, Mosquitto

KEY = "0123456789abcdef"  # 16 bytes: tinydtls's largest key

CONFIG = """
shutdown_timeout = 3.0
[metrics]
address = "127.0.0.1:{{metrics_port}}"

[[listener]]
name = "coaps"
protocol = "coap"
address = "127.0.0.1:{publish_port}"
target = "mqtt"
[listener.psk]
sensor-17 = "{key}"
stranger = "stranger-key"

[[listener]]
name = "coaps-proxy"
protocol = "coap"
address = "127.0.0.1:{proxy_port}"
target = "coap://127.0.0.1:{target_port}"
[listener.psk]
sensor-17 = "{key}"

[auth]
handler = "static"
[[auth.users]]
username = "sensor"
identity = "sensor-17"
publish = ["sensors/%u/#", "example_data"]
subscribe = ["sensors/%u/#", "example_data"]
[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]

[bridge.mqtt]
url = "tcp://127.0.0.1:{broker}"
client_id = "coaps-{uid}"
"""

# coap-client's -v 7 trace: "v:1 t:ACK c:2.04 i:1c5e {0b} [ ]" (and ":: 'payload'" when there is one)
_RESPONSE = re.compile(r"v:1 t:(?:CON|NON|ACK|RST) c:(\d\.\d\d) i:[0-9a-f]+ \{[0-9a-f]*\}.*?(?: :: '(.*)')?$")


def _client(*args: str, program: str = "coap-client-openssl", wait: int = 3) -> tuple[str | None, str, str]:
    """Runs libcoap's client; (the response code or None, its payload, the whole trace)."""
    proc = subprocess.run(
        [program, "-v", "7", "-B", str(wait), *args], capture_output=True, text=True, timeout=wait + 10
    )
    out = proc.stdout + proc.stderr
    for line in out.splitlines():
        m = _RESPONSE.search(line)
        if m is not None:
            return m.group(1), m.group(2) or "", out
    return None, "", out


def coaps(
    port: int, path: str, *args: str, identity: str = "sensor-17", key: str = KEY
) -> tuple[str | None, str]:
    code, payload, _ = _client("-u", identity, "-k", key, *args, f"coaps://127.0.0.1:{port}/{path}")
    return code, payload


class Gw:
    def __init__(self, proc: GatewayProcess, publish_port: int, proxy_port: int) -> None:
        self.proc = proc
        self.publish_port = publish_port
        self.proxy_port = proxy_port


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("coaps-mosquitto")) as m:
        yield m


@pytest.fixture(scope="module")
def coap_target() -> Iterator[int]:
    """libcoap's example server (``/`` answers a greeting): the proxy listener's target."""
    with libcoap_server() as port:
        yield port


@pytest.fixture(scope="module")
def gw(mqtt_broker: Mosquitto, coap_target: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    publish_port, proxy_port = free_udp_ports(2)
    config = CONFIG.format(
        publish_port=publish_port,
        proxy_port=proxy_port,
        target_port=coap_target,
        key=KEY,
        broker=mqtt_broker.port,
        uid=uuid.uuid4().hex[:6],
    )
    proc = GatewayProcess(tmp_path_factory.mktemp("coaps-gw"), config)
    proc.ports = [proc.metrics_port]  # UDP cannot be waited for; metrics come up after the listeners
    proc.start()
    yield Gw(proc, publish_port, proxy_port)
    rc, err = proc.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"
    assert KEY not in err and "stranger-key" not in err  # pre-shared keys never reach the log


# -- publish mode ----------------------------------------------------------------------------------------


def test_psk_identity_publishes_without_a_password(gw: Gw, mqtt_broker: Mosquitto) -> None:
    sub = Subscriber(mqtt_broker.port, "sensors/#").start()
    # The static user with identity = "sensor-17" logs in by the PSK identity alone (%u is its username).
    code, _ = coaps(gw.publish_port, "sensors/sensor/temp", "-m", "post", "-e", "21.5")
    assert code == "2.04"
    assert sub.messages() == ["1 0 sensors/sensor/temp 21.5"]
    # The grant is the identity's user's: another user's topic is 4.03.
    assert coaps(gw.publish_port, "dev1/x", "-m", "post", "-e", "1")[0] == "4.03"


def test_wrong_key_gets_no_session_and_publishes_nothing(gw: Gw, mqtt_broker: Mosquitto) -> None:
    sub = Subscriber(mqtt_broker.port, "sensors/#").start()
    code, _, out = _client(
        "-u", "sensor-17", "-k", "fedcba9876543210", "-m", "post", "-e", "wrong",
        f"coaps://127.0.0.1:{gw.publish_port}/sensors/sensor/temp", wait=2,
    )  # fmt: skip
    assert code is None, out
    assert "alert" in out.lower() or "cannot send" in out.lower(), out  # the handshake failed
    code, _, out = _client(
        "-u", "nobody", "-k", KEY, "-m", "post", "-e", "unknown",
        f"coaps://127.0.0.1:{gw.publish_port}/sensors/sensor/temp", wait=2,
    )  # fmt: skip
    assert code is None, out  # an identity the listener does not know: no session either
    # The first message the subscriber sees is the next good one: nothing came from the refused clients.
    assert coaps(gw.publish_port, "sensors/sensor/ok", "-m", "post", "-e", "ok")[0] == "2.04"
    assert sub.messages() == ["1 0 sensors/sensor/ok ok"]


def test_identity_without_user_is_401_and_auth_still_works(gw: Gw, mqtt_broker: Mosquitto) -> None:
    code, payload = coaps(
        gw.publish_port, "dev1/x", "-m", "post", "-e", "1", identity="stranger", key="stranger-key"
    )
    assert (code, payload) == ("4.01", "credentials refused")  # the handler's reason is not told (issue 11)
    sub = Subscriber(mqtt_broker.port, "dev1/#").start()
    code, _ = coaps(
        gw.publish_port,
        "dev1/x?auth=dev1:pw1",
        "-m",
        "post",
        "-e",
        "2",
        identity="stranger",
        key="stranger-key",
    )
    assert code == "2.04"  # ?auth= over DTLS: the password decides
    assert sub.messages() == ["1 0 dev1/x 2"]
    wrong = coaps(
        gw.publish_port,
        "dev1/x?auth=dev1:nope",
        "-m",
        "post",
        "-e",
        "3",
        identity="stranger",
        key="stranger-key",
    )
    assert wrong[0] == "4.01"


def test_plain_coap_to_the_dtls_port_gets_no_answer(gw: Gw) -> None:
    code, _, out = _client(
        "-m", "post", "-e", "1", f"coap://127.0.0.1:{gw.publish_port}/dev1/x?auth=dev1:pw1",
        program="coap-client-notls", wait=2,
    )  # fmt: skip
    assert code is None, out
    # ... and the listener still serves DTLS afterwards.
    assert coaps(gw.publish_port, "sensors/sensor/after", "-m", "post", "-e", "1")[0] == "2.04"


# -- proxy mode ------------------------------------------------------------------------------------------


def test_proxy_mode_over_dtls(gw: Gw) -> None:
    """The same site as for plain coap, behind DTLS: the PSK identity's user and grant apply."""
    code, _ = coaps(gw.proxy_port, "example_data", "-m", "put", "-e", "via-dtls")
    assert code in ("2.01", "2.04")
    assert coaps(gw.proxy_port, "example_data", "-m", "get") == ("2.05", "via-dtls")
    assert coaps(gw.proxy_port, "time", "-m", "get")[0] == "4.03"  # not in the grant: never forwarded
    code, _ = coaps(gw.proxy_port, "example_data", "-m", "get", identity="stranger", key="stranger-key")
    assert code is None  # not an identity of this listener: no DTLS session


# -- the transport adjustments (dtls.harden), in a process of their own ----------------------------------

HARDENED_SERVER = """
import asyncio, sys
import aiocoap, aiocoap.resource as resource
from ferryman.protocols.coap import dtls
from ferryman.protocols.coap.auth import _dtls_identity, remote_of

class Who(resource.Resource):
    async def render_get(self, request):
        pool = self.pool
        text = f"{remote_of(request)} {_dtls_identity(request)} {len(pool._connections)}"
        return aiocoap.Message(payload=text.encode())

async def main():
    site = resource.Site()
    who = Who()
    site.add_resource(["who"], who)
    dtls.MAX_PEERS = 4
    context = await aiocoap.Context.create_server_context(
        site, bind=dtls.dtls_bind("127.0.0.1", 0), transports=["tinydtls_server"]
    )
    context.server_credentials.load_from_dict(dtls.psk_credentials({"sensor-17": sys.argv[1]}))
    assert dtls.harden(context) == 1
    (interface,) = context.request_interfaces
    who.pool = interface.token_interface.message_interface._pool
    print(who.pool._transport.get_extra_info("sockname")[1], flush=True)
    await asyncio.sleep(20)

asyncio.run(main())
"""


def test_remotes_carry_the_peer_address_and_peer_state_is_bounded(tmp_path: Path) -> None:
    import sys

    script = tmp_path / "server.py"
    script.write_text(HARDENED_SERVER)
    server = subprocess.Popen([sys.executable, str(script), KEY], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        for _ in range(20):  # garbage from 20 source ports: one DTLS state each, at most MAX_PEERS kept
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x16\xfe\xfd garbage", ("127.0.0.1", port))
        code, payload, out = _client("-u", "sensor-17", "-k", KEY, f"coaps://127.0.0.1:{port}/who")
        assert code == "2.05", out
        m = re.fullmatch(r"\('127\.0\.0\.1', (\d+)\) sensor-17 (\d+)", payload)
        assert m is not None, payload  # the Session's remote_addr is the peer's, not ("?", 0)
        assert int(m.group(1)) > 0 and int(m.group(2)) <= 4
    finally:
        server.terminate()
        server.wait(5)


# -- settings --------------------------------------------------------------------------------------------


def _listener(tmp_path: Path, extra: str, address: str = "127.0.0.1:5684") -> object:
    path = tmp_path / "s.toml"
    path.write_text(
        f'[[listener]]\nname = "c"\nprotocol = "coap"\naddress = "{address}"\ntarget = "mqtt"\n{extra}\n'
        "[bridge.mqtt]\n"
    )
    return load_settings(path, env={}).listeners[0]


def test_what_the_listener_refuses(tmp_path: Path) -> None:
    ok = _listener(tmp_path, '[listener.psk]\nsensor-17 = "0123456789abcdef"')
    assert CoapListener.validate_settings(ok) == []
    anywhere = _listener(tmp_path, '[listener.psk]\na = "k"', address="0.0.0.0:5684")
    (problem,) = CoapListener.validate_settings(anywhere)
    assert "any-address" in problem
    long = _listener(tmp_path, f'[listener.psk]\n{"i" * 33} = "{"k" * (MAX_KEY_BYTES + 1)}"')
    problems = CoapListener.validate_settings(long)
    assert len(problems) == 2 and "at most 32 bytes" in problems[0] and "at most 16 bytes" in problems[1]


def test_credentials_are_named_after_the_identity() -> None:
    creds = psk_credentials({"sensor-17": KEY, "é": "k"})
    assert creds["sensor-17"] == {
        "dtls": {"psk": {"hex": KEY.encode().hex()}, "client-identity": {"hex": b"sensor-17".hex()}}
    }
    import aiocoap.credentials

    loaded = aiocoap.credentials.CredentialsMap()
    loaded.load_from_dict(creds)
    assert loaded.find_dtls_psk("é".encode()) == (b"k", "é")  # (key, the claim auth.py reads)
    with pytest.raises(KeyError):
        loaded.find_dtls_psk(b"other")
