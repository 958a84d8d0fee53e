from gevent import monkey

monkey.patch_all()  # first statement: the test process runs pykka and paho on gevent like the gateway does

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import GatewayProcess, Mosquitto

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One mosquitto for the session, on a free 127.0.0.1 port, from the project's config/mosquitto.conf."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as m:
        yield m


STANDARD_CONFIG = """
shutdown_timeout = 3.0
[log]
level = "debug"
[metrics]
address = "127.0.0.1:{metrics_port}"

[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port0}"
target = "tcp://127.0.0.1:{broker_port}"
connect_timeout = 1.0
max_packet_size = 65536

[[listener]]
name = "mqtt-strict"
protocol = "mqtt"
address = "127.0.0.1:{port1}"
target = "tcp://127.0.0.1:{broker_port}"
refused_publish_v3 = "disconnect"

[auth]
handler = "static"

[[auth.users]]
username = "dev1"
password = "pw1"
publish = ["dev1/#"]
subscribe = ["dev1/#", "public/#"]

[[auth.users]]
username = "dev2"
password_hash = "{dev2_hash}"
publish = ["%u/%c/#"]
subscribe = ["%u/#"]

[[auth.users]]
username = "admin"
password = "admin-pw"
publish = ["#"]
subscribe = ["#"]
"""


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The development PKI of `ferryman certs` (ferryman_devtools/pki.py: write_dev_pki), once per session."""
    from ferryman_devtools.pki import write_dev_pki

    directory = tmp_path_factory.mktemp("dev-pki")
    write_dev_pki(directory)
    return directory


@pytest.fixture(scope="session")
def ws_broker(tmp_path_factory: pytest.TempPathFactory, dev_pki: Path) -> Iterator[Mosquitto]:
    """A second mosquitto with more listeners: plain MQTT (``port``), websockets (``ws_port``) and MQTT over
    TLS requiring a client certificate of the dev PKI (``tls_port``)."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-ws"), websockets=True, tls_pki=dev_pki) as m:
        yield m


@pytest.fixture(scope="module")
def proxy(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with the standard settings (static users dev1, dev2, admin) in front of the session
    broker; ``proxy.ports[0]`` is the normal listener, ``proxy.ports[1]`` has refused_publish_v3 =
    "disconnect"."""
    from ferryman.bridge.passwords import hash_password

    fills = {"broker_port": broker.port, "dev2_hash": hash_password("pw2", iterations=1000)}
    gw = GatewayProcess(tmp_path_factory.mktemp("proxy"), STANDARD_CONFIG, ports=2, fills=fills)
    gw.start()
    yield gw
    rc, err = gw.stop()
    assert rc == 0 and "Traceback" not in err, f"gateway exited {rc}:\n{err[-3000:]}"


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[object]:
    """Starts ``ferryman run`` processes from TOML text; every one is stopped (SIGTERM) at teardown and
    must exit 0 without a traceback."""
    started: list[GatewayProcess] = []

    def start(config: str, **kwargs: object) -> GatewayProcess:
        gw = GatewayProcess(tmp_path / f"gw{len(started)}", config, **kwargs)  # type: ignore[arg-type]
        started.append(gw)
        gw.start()
        return gw

    yield start
    problems = []
    for gw in started:
        rc, err = gw.stop()
        if rc != 0 or "Traceback" in err:
            problems.append(f"gateway exited {rc}:\n{err[-3000:]}")
    assert not problems, "\n".join(problems)


def pytest_report_header(config: pytest.Config) -> str:
    return f"ferryman tests: repo {REPO}, CI={os.environ.get('CI', '')}"


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One Prosody for the session (tests/prosody.py): localhost with component gw.localhost, on free
    127.0.0.1 ports, from the project's config/prosody.cfg.lua, run as the prosody user."""
    from tests.prosody import Prosody

    with Prosody(tmp_path_factory.mktemp("prosody")) as server:
        yield server


@pytest.fixture(scope="module")
def host() -> Iterator[object]:
    """An asyncio host (one loop in a real thread) for slixmpp test clients, per test module: slixmpp
    objects bind to the loop they were made on."""
    from ferryman.actors.asyncio_host import AsyncioHost

    h = AsyncioHost()
    h.start()
    yield h
    h.stop()
