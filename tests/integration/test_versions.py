"""The libraries actually installed are the tested ones: the start-up version check (ferryman/versions.py)
passes."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from ferryman.versions import PINS, untested


def test_the_installed_libraries_are_in_their_tested_ranges() -> None:
    installed = {pin.distribution: importlib.metadata.version(pin.distribution) for pin in PINS}
    assert untested() == [], installed
    assert all(pin.admits(installed[pin.distribution]) for pin in PINS)


def test_ferryman_check_passes_the_version_check_of_the_real_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    out = subprocess.run(
        [sys.executable, "-m", "ferryman", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: <defaults>")
    assert "is installed, but ferryman is tested with" not in out.stderr
