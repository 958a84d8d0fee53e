"""The operator contract of the command line: check, run, hash-password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ferryman.protocols.mqtt.packets import Publish
from tests.rawclient import RawClient
from tests.servers import Mosquitto, free_port, wait_port


def ferryman(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "ferryman", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
        cwd=cwd,
    )


def test_check_prints_every_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[log]
level = "loud"
[metrics]
adress = "127.0.0.1:9100"
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "nohost"
target = "tcp://127.0.0.1:1883"
"""
    )
    out = ferryman("check", "--config", str(bad))
    assert out.returncode == 1
    err = out.stderr
    assert "log.level" in err
    assert "metrics.adress" in err and "address" in err  # unknown key, with the suggestion
    assert "listener[0].address" in err
    assert "3 error(s)" in err


def test_check_reports_handler_problems(tmp_path: Path) -> None:
    cfg = tmp_path / "h.toml"
    cfg.write_text(
        """
[auth]
handler = "no-such-handler"
[[handler]]
name = "topic-prefix"
"""
    )
    out = ferryman("check", "--config", str(cfg))
    assert out.returncode == 1
    assert "auth.handler" in out.stderr and "no-such-handler" in out.stderr
    assert "handler[0] (topic-prefix)" in out.stderr and "prefix" in out.stderr


def test_check_ok_and_print_masks_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text(
        """
[auth]
handler = "static"
[[auth.users]]
username = "dev1"
password = "very-secret-pw"
publish = ["dev1/#"]
"""
    )
    out = ferryman("check", "--config", str(cfg), "--print")
    assert out.returncode == 0, out.stderr
    assert "ok:" in out.stdout
    assert "very-secret-pw" not in out.stdout and "****" in out.stdout


def test_run_with_embedded_defaults_and_env_overrides(tmp_path: Path) -> None:
    """No settings file: the embedded defaults (MQTT listener, allow-all) with its address and target
    overridden from the environment, in front of a real broker."""
    with Mosquitto(tmp_path / "mq") as broker:
        port = free_port()
        env = {
            "FERRYMAN_LISTENER__0__ADDRESS": f"127.0.0.1:{port}",
            "FERRYMAN_LISTENER__0__TARGET": f"tcp://127.0.0.1:{broker.port}",
            "FERRYMAN_METRICS__ADDRESS": "",
        }
        import os

        proc = subprocess.Popen(
            [sys.executable, "-m", "ferryman", "run"],
            env=dict(os.environ, **env),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_port(port, proc=proc)  # type: ignore[arg-type]
            c = RawClient(port, 5)
            assert c.connect("defaults").reason_code == 0
            c.subscribe("x/#")
            c.publish("x/1", b"hello", qos=0)
            assert c.expect(Publish).payload == b"hello"
            c.disconnect()
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert "allow-all" in err  # the permissive default is announced


def test_run_with_bad_settings_exits_2_with_the_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[log]\nlevel = "loud"\n')
    out = ferryman("run", "--config", str(cfg))
    assert out.returncode == 2
    assert "log.level" in out.stderr


def test_hash_password_output_verifies() -> None:
    from ferryman.bridge.passwords import verify_password

    out = ferryman("hash-password", "s3cret", "--iterations", "1000")
    assert out.returncode == 0
    encoded = out.stdout.strip()
    assert verify_password(b"s3cret", encoded)
    assert not verify_password(b"other", encoded)


def test_check_refuses_what_this_version_cannot_do(tmp_path: Path, dev_pki: Path) -> None:
    cfg = tmp_path / "coaps.toml"
    cfg.write_text(
        f"""
[[listener]]
name = "coaps"
protocol = "coap"
address = "127.0.0.1:5684"
target = "mqtt"
[listener.tls]
cert_file = "{dev_pki}/server.crt"
key_file = "{dev_pki}/server.key"
[listener.psk]
sensor-17 = "0123456789abcdef"
[bridge.mqtt]
url = "tcp://127.0.0.1:1883"
"""
    )
    out = ferryman("check", "--config", str(cfg))
    assert out.returncode == 1
    # certificates (OpenSSL) and pre-shared keys (tinydtls) are served, each on a listener of its own
    assert "listener[0]: DTLS (coaps) with both [listener.tls] and [listener.psk]" in out.stderr


def test_json_logs_are_one_object_a_line(tmp_path: Path) -> None:
    import json
    import os
    import signal

    port = free_port()
    cfg = tmp_path / "json.toml"
    cfg.write_text(
        f"""
[log]
format = "json"
[metrics]
address = ""
[[listener]]
name = "mqtt"
protocol = "mqtt"
address = "127.0.0.1:{port}"
target = "tcp://127.0.0.1:1"
[auth]
handler = "allow-all"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferryman", "run", "--config", str(cfg)],
        env=dict(os.environ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, proc=proc)  # type: ignore[arg-type]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    messages = [r["record"]["message"] for r in records]
    assert any("gateway started" in m for m in messages)
    assert any("SIGTERM received" in m for m in messages)


def test_certs_writes_the_contract_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = ferryman("certs", str(tmp_path / "pki"))
    assert out.returncode == 0, out.stderr
    for name in (
        "ca.crt",
        "server.key",
        "client-revoked.crt",
        "client-unknown.key",
        "client-expired.crt",
        "crl.pem",
    ):
        assert (tmp_path / "pki" / name).is_file()
    again = ferryman("certs", str(tmp_path / "pki"))
    assert again.returncode == 1 and "--force" in again.stderr
    assert ferryman("certs", str(tmp_path / "pki"), "--force").returncode == 0
