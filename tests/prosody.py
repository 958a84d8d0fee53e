"""A real Prosody (Debian package) for the tests: the project's config/prosody.cfg.lua moved to free
127.0.0.1 ports through its ENV_ variables, run as the ``prosody`` user, stopped by PID.

Prosody refuses to stay root, and pytest's tmp dirs are 0700 root, so the server's own directory (config
copy, data, pidfile, log) is a ``mkdtemp`` in the system temp dir owned by ``prosody``; at stop its log is
copied into ``workdir`` and the directory removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.servers import REPO, free_port, wait_port

PROSODY_USER = "prosody"


class Prosody:
    domain = "localhost"
    component_jid = "gw.localhost"

    def __init__(self, workdir: Path, component_secret: str = "gateway-test-secret") -> None:
        self.workdir = workdir
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.component_secret = component_secret
        self.rundir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # runuser, whose child is prosody

    @property
    def config(self) -> Path:
        assert self.rundir is not None, "start() first"
        return self.rundir / "prosody.cfg.lua"

    @property
    def log(self) -> Path:
        assert self.rundir is not None, "start() first"
        return self.rundir / "prosody.log"

    def env(self) -> dict[str, str]:
        assert self.rundir is not None, "start() first"
        return dict(
            os.environ,
            FERRYMAN_PROSODY_DIR=str(self.rundir),
            FERRYMAN_PROSODY_C2S_PORT=str(self.c2s_port),
            FERRYMAN_PROSODY_COMPONENT_PORT=str(self.component_port),
            FERRYMAN_PROSODY_COMPONENT_SECRET=self.component_secret,
            FERRYMAN_PROSODY_INTERFACE="127.0.0.1",
        )

    def _as_prosody(self, *argv: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", PROSODY_USER, "--", *argv]
        return list(argv)  # already unprivileged (e.g. a CI user): prosody runs as that user

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir = Path(tempfile.mkdtemp(prefix="ferryman-prosody-"))
        for sub in ("data", "certs"):  # certs: empty, only so that prosody does not log an error
            (self.rundir / sub).mkdir()
        shutil.copy(REPO / "config" / "prosody.cfg.lua", self.config)
        if os.geteuid() == 0:
            for path in (self.rundir, *self.rundir.iterdir()):
                shutil.chown(path, PROSODY_USER, PROSODY_USER)
        self.proc = subprocess.Popen(
            self._as_prosody("prosody", "--config", str(self.config), "-F"),
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "prosody.stderr").open("ab"),
            env=self.env(),
        )
        try:
            wait_port(self.c2s_port, proc=self.proc)
            wait_port(self.component_port, proc=self.proc)
        except Exception as exc:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            self.stop()
            raise RuntimeError(f"prosody did not start: {exc}\n{log[-3000:]}") from None

    def register(self, user: str, password: str) -> None:
        """Creates (or re-keys) ``user@localhost`` with prosodyctl, as the prosody user."""
        subprocess.run(
            self._as_prosody(
                "prosodyctl", "--config", str(self.config), "register", user, self.domain, password
            ),
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=30,
        )

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def pid(self) -> int | None:
        """Prosody's own PID (runuser's child) from its pidfile."""
        if self.rundir is None:
            return None
        try:
            return int((self.rundir / "prosody.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 5) -> None:
        pid = self.pid()
        if self.proc is not None:
            if self.proc.poll() is None:
                if pid is not None:
                    _signal(pid, signal.SIGTERM)
                else:
                    self.proc.terminate()  # runuser passes SIGTERM on to prosody
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    if pid is not None:
                        _signal(pid, signal.SIGKILL)
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if pid is not None:  # never leave prosody behind, even if runuser is gone
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        if self.rundir is not None:
            if self.log.exists():
                shutil.copy(self.log, self.workdir / "prosody.log")
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None

    def __enter__(self) -> Prosody:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        return b"prosody" in Path(f"/proc/{pid}/cmdline").read_bytes()  # not a recycled PID
    except OSError:
        return False


@contextlib.contextmanager
def prosody_with_users(directory: Path, users: Mapping[str, str]) -> Iterator[Prosody]:
    """A ``Prosody`` of its own in ``directory`` with ``users`` (name -> password) registered, stopped
    on exit: for a test module that restarts it or needs its component connection to itself."""
    server = Prosody(directory)
    server.start()
    try:
        for name, password in users.items():
            server.register(name, password)
        yield server
    finally:
        server.stop()
