"""Real servers for the tests: mosquitto and the ferryman gateway itself, each a child process on a free
127.0.0.1 port, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent


def uid() -> str:
    """A short unique suffix for client ids and topics: the session's broker is shared by every test."""
    return uuid.uuid4().hex[:8]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (TCP, or UDP with ``socket.SOCK_DGRAM``): every socket is
    held until all are bound, so no two are the same (one at a time, a closed port can come back)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, kind)) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def mosquitto_config(port: int, extra: str = "") -> str:
    """The project's broker config (config/mosquitto.conf) moved to ``port``."""
    base = (REPO / "config" / "mosquitto.conf").read_text()
    lines = [ln for ln in base.splitlines() if not ln.startswith("listener ")]
    return f"listener {port} 127.0.0.1\n" + "\n".join(lines) + "\n" + extra


def websockets_listener(port: int) -> str:
    """A mosquitto websockets listener on 127.0.0.1 (``socket_domain ipv4``: without it libwebsockets binds
    every interface)."""
    return f"listener {port} 127.0.0.1\nprotocol websockets\nsocket_domain ipv4\n"


def tls_listener(port: int, pki: Path, require_certificate: bool = True) -> str:
    """A mosquitto MQTT-over-TLS listener with the dev PKI's server certificate; with
    ``require_certificate`` clients must present one issued by the dev CA (mTLS)."""
    return (
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        f"require_certificate {'true' if require_certificate else 'false'}\n"
    )


def broker_readable_pki(pki: Path) -> Path:
    """A copy of the CA and server files mosquitto can read: started as root it drops to the `mosquitto`
    user before loading them, and pytest's temporary directories (and the 0600 key) are root's alone."""
    copy = Path(tempfile.mkdtemp(prefix="ferryman-broker-pki-"))
    copy.chmod(0o755)
    owner = None
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam("mosquitto")
            owner = (entry.pw_uid, entry.pw_gid)
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copyfile(pki / name, copy / name)
        (copy / name).chmod(0o600 if name.endswith(".key") else 0o644)
        if owner is not None:
            os.chown(copy / name, *owner)
    return copy


class Mosquitto:
    """mosquitto on a free port (``port``); ``websockets=True`` adds a websockets listener (``ws_port``),
    ``tls_pki`` a TLS listener requiring a client certificate of that dev PKI (``tls_port``)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra: str = "",
        websockets: bool = False,
        tls_pki: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.ws_port = free_port() if websockets else 0
        self.tls_port = free_port() if tls_pki is not None else 0
        self.tls_pki = tls_pki
        self._pki_copy: Path | None = None
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        extra = self.extra
        if self.ws_port:
            extra += "\n" + websockets_listener(self.ws_port)
        if self.tls_pki is not None:
            self._pki_copy = broker_readable_pki(self.tls_pki)
            extra += "\n" + tls_listener(self.tls_port, self._pki_copy)
        self.conf.write_text(mosquitto_config(self.port, extra))
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=self.log.open("ab")
        )
        for port in (self.port, self.ws_port, self.tls_port):
            if port:
                wait_port(port, proc=self.proc)

    def wait_dropped(self, client_id: str, times: int = 1, timeout: float = 10) -> None:
        """Until the broker has logged the end of ``times`` connections of ``client_id``: a proxied client's
        DISCONNECT reaches the broker a little later than a direct one's, and a message published before the
        broker saw it would go to the old connection rather than into the stored session."""
        ends = (f"Client {client_id} disconnected", f"Client {client_id} closed its connection")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.log.read_text(errors="replace").splitlines()
            if sum(1 for line in lines if any(e in line for e in ends)) >= times:
                return
            time.sleep(0.02)
        raise AssertionError(f"the broker never logged {times} end(s) of {client_id}'s connections")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._pki_copy is not None:
            shutil.rmtree(self._pki_copy, ignore_errors=True)
            self._pki_copy = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess:
    """``python -m ferryman run --config FILE [args]`` with ``{port}``/``{metrics_port}`` filled into the
    TOML."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        env: dict[str, str] | None = None,
        ports: int = 1,
        fills: dict[str, object] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.args = args
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        *self.ports, self.metrics_port = free_ports(ports + 1)
        self.port = self.ports[0]
        self.fills: dict[str, object] = {
            "port": self.port,
            "metrics_port": self.metrics_port,
            "workdir": str(workdir),
        }
        self.fills.update({f"port{i}": p for i, p in enumerate(self.ports)})
        self.fills.update(fills or {})
        self.config_path = workdir / "ferryman.toml"
        self.config_path.write_text(config.format(**self.fills))
        self.env = dict(os.environ, **(env or {}))
        self.stderr_path = workdir / "ferryman.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ferryman", "run", "--config", str(self.config_path), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("wb"),
            env=self.env,
            cwd=self.workdir,
        )
        try:
            for port in self.ports:
                wait_port(port, timeout=20, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.stderr()}") from None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """The first sample of ``name`` on the gateway's /metrics (the TOML must put metrics on
        ``{metrics_port}``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def rewrite_config(self, config: str) -> None:
        self.config_path.write_text(config.format(**self.fills))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        if self.proc is None:
            return 0, self.stderr()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc = self.proc.returncode
                self.proc = None
                return rc if rc else -9, self.stderr() + "\n(killed: did not stop within the timeout)"
        rc = self.proc.returncode
        self.proc = None
        return rc, self.stderr()

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
