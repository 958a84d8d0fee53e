"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine on the test machines): the
compose file's shape, that every bind-mounted file exists, loopback-only ports, and that the services run
from the same config files the test fixtures start natively (tests/servers.py, tests/prosody.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.wiring import load_settings
from tests.servers import REPO, mosquitto_config

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SERVICES = {"mosquitto", "prosody", "ferryman"}

# Compose specification: top-level elements, and the service keys this project may use.
TOP_LEVEL = {"name", "services", "networks", "volumes", "configs", "secrets", "include"}
SERVICE_KEYS = {
    "build", "command", "container_name", "depends_on", "entrypoint", "env_file", "environment",
    "expose", "healthcheck", "image", "init", "labels", "logging", "networks", "ports", "profiles",
    "read_only", "restart", "stop_grace_period", "stop_signal", "tmpfs", "user", "volumes", "working_dir",
}  # fmt: skip
RESTART = {"no", "always", "on-failure", "unless-stopped"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set: the defaults (what `docker compose up` uses)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the ["KEY=value"] form
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path (resolved against the repository) of every bind mount."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts[volume["target"]] = REPO / volume["source"]
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = REPO / source
    return mounts


def dockerfile_instruction(name: str) -> list[str]:
    """The JSON (exec) form of the Dockerfile's last ``name`` instruction."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith(f"{name} ")]
    assert lines, f"the Dockerfile has no {name}"
    value = json.loads(lines[-1][len(name) + 1 :])
    assert isinstance(value, list)
    return [str(v) for v in value]


def directives(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_compose_shape(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the compose specification has no version key"
    assert set(compose) <= TOP_LEVEL, set(compose) - TOP_LEVEL
    assert set(services(compose)) == SERVICES
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services(compose).items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name
        assert service.get("restart", "no") in RESTART, name
        depends = service.get("depends_on", {})
        for dep in depends:
            assert dep in SERVICES and dep != name, (name, dep)
            if isinstance(depends, dict):
                assert depends[dep].get("condition", "service_started") in DEPENDS_CONDITIONS, (name, dep)
                if depends[dep].get("condition") == "service_healthy":
                    assert "healthcheck" in services(compose)[dep], (name, dep)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/")):
                assert source in named_volumes, (name, source)
        if "healthcheck" in service:
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL", "NONE"}, name


def test_bind_mounts_exist(compose: dict[str, Any]) -> None:
    mounted = 0
    for name, service in services(compose).items():
        for target, host in bind_mounts(service).items():
            assert host.resolve().is_relative_to(REPO), (name, host)
            assert host.is_file(), f"{name}: {host} (mounted at {target}) does not exist"
            mounted += 1
    assert mounted >= 3


def test_ports_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)


def test_ferryman_settings_load_with_compose_environment(compose: dict[str, Any]) -> None:
    ferryman = services(compose)["ferryman"]
    mounts = bind_mounts(ferryman)
    config_path = dockerfile_instruction("CMD")[dockerfile_instruction("CMD").index("--config") + 1]
    assert config_path in mounts, f"the Dockerfile's CMD reads {config_path}, compose mounts {list(mounts)}"
    settings = load_settings(mounts[config_path], env=environment(ferryman))

    # Published container ports are the ones the settings listen on (and the image exposes).
    listen_ports = {int(listener.address.rsplit(":", 1)[1]) for listener in settings.listeners}
    metrics_port = int(settings.metrics.address.rsplit(":", 1)[1])
    published = {int(str(p).rsplit(":", 1)[1]) for p in ferryman["ports"]}
    assert published == listen_ports | {metrics_port}
    exposed = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("EXPOSE "):
            exposed |= {int(p) for p in line.split()[1:]}
    assert exposed == published
    assert f":{metrics_port}/health" in DOCKERFILE.read_text()
    for listener in settings.listeners:
        assert listener.address.startswith("0.0.0.0:"), "inside a container loopback is unreachable"
        assert listener.target == "tcp://mosquitto:1883"

    assert settings.bridge.mqtt is not None and settings.bridge.mqtt.url == "tcp://mosquitto:1883"
    xmpp = settings.bridge.xmpp
    assert xmpp is not None and xmpp.mode == "component"
    prosody_env = environment(services(compose)["prosody"])
    assert xmpp.server == f"prosody:{prosody_env['FERRYMAN_PROSODY_COMPONENT_PORT']}"
    assert xmpp.secret == prosody_env["FERRYMAN_PROSODY_COMPONENT_SECRET"]
    assert xmpp.store.startswith("/var/lib/ferryman/")
    assert "/var/lib/ferryman" in [v.split(":")[1] for v in ferryman["volumes"] if isinstance(v, str)]
    # The same secret expression on both sides, not two literals that happen to match today.
    raw = {s: services(compose)[s]["environment"] for s in ("prosody", "ferryman")}
    assert (
        raw["prosody"]["FERRYMAN_PROSODY_COMPONENT_SECRET"]
        == raw["ferryman"]["FERRYMAN_BRIDGE__XMPP__SECRET"]
    )


def test_dockerfile(compose: dict[str, Any]) -> None:
    text = DOCKERFILE.read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("FROM ")] == ["FROM python:3.11-slim"]
    assert "pip install ." in text
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert dockerfile_instruction("ENTRYPOINT") == ["ferryman"]
    assert dockerfile_instruction("CMD")[0] == "run"
    assert "curl" not in text.split("HEALTHCHECK", 1)[1]
    assert services(compose)["ferryman"]["build"] in [".", {"context": "."}]


def test_compose_mosquitto_config_is_the_tests_config(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(services(compose)["mosquitto"])
    host = mounts["/mosquitto/config/mosquitto.conf"]  # where the image's default command reads it
    assert host != REPO / "config" / "mosquitto.conf"
    compose_conf = directives(host.read_text())
    tests_conf = directives((REPO / "config" / "mosquitto.conf").read_text())
    assert tests_conf.count("listener 1883 127.0.0.1") == 1  # what tests/servers.py moves
    assert [ln for ln in compose_conf if not ln.startswith("listener ")] == [
        ln for ln in tests_conf if not ln.startswith("listener ")
    ]
    assert [ln for ln in compose_conf if ln.startswith("listener ")] == ["listener 1883 0.0.0.0"]
    # And the config the fixtures really run, moved to 1883, differs from compose's only in that address.
    assert sorted(directives(mosquitto_config(1883))) == sorted(
        ln.replace("listener 1883 0.0.0.0", "listener 1883 127.0.0.1") for ln in compose_conf
    )


def test_compose_prosody_environment_is_what_the_config_reads(compose: dict[str, Any]) -> None:
    prosody = services(compose)["prosody"]
    config = REPO / "config" / "prosody.cfg.lua"
    assert bind_mounts(prosody) == {"/etc/prosody/prosody.cfg.lua": config}
    read = set(re.findall(r"\bENV_(\w+)", config.read_text()))
    env = environment(prosody)
    assert set(env) <= read, set(env) - read
    assert env["FERRYMAN_PROSODY_INTERFACE"] == "0.0.0.0"
    data_dir = env["FERRYMAN_PROSODY_DIR"]
    assert data_dir in [v.split(":")[1] for v in prosody["volumes"] if isinstance(v, str)]
    # tests/prosody.py moves the same file with the same variables.
    fixture = (REPO / "tests" / "prosody.py").read_text()
    assert set(env) <= set(re.findall(r"\b(FERRYMAN_PROSODY_\w+)=", fixture))
