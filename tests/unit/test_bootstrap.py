"""gevent must patch before ssl, asyncio, pykka, loguru or paho are imported, in every entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from ferryman.actors.bootstrap import verify

# Records, for each watched module, whether gevent had already patched `socket` when it was first imported.
RECORDER = textwrap.dedent(
    """
    import importlib.abc, json, sys
    WATCH = {"ssl", "asyncio", "pykka", "loguru", "paho", "prometheus_client"}
    report = {}
    class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name in WATCH and name not in report:
                monkey = sys.modules.get("gevent.monkey")
                report[name] = bool(monkey and monkey.is_module_patched("socket"))
            return None
    sys.meta_path.insert(0, Recorder())
    """
)


def run_recorded(entry: str) -> dict[str, bool]:
    code = RECORDER + entry + "\nprint('REPORT' + json.dumps(report))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("REPORT")]
    assert line, out.stderr
    report: dict[str, bool] = json.loads(line[0][len("REPORT") :])
    return report


@pytest.mark.parametrize(
    "entry",
    [
        # the console script `ferryman` imports ferryman.cli and calls main()
        "import ferryman.cli as cli\ntry:\n    cli.main(['check'])\nexcept SystemExit:\n    pass",
        # python -m ferryman
        "import runpy\nsys.argv = ['ferryman', 'check']\ntry:\n"
        "    runpy.run_module('ferryman', run_name='__main__')\nexcept SystemExit:\n    pass",
    ],
    ids=["console-script", "python-m"],
)
def test_entry_points_patch_before_sensitive_imports(entry: str) -> None:
    report = run_recorded(entry)
    for module in ("ssl", "pykka", "loguru"):
        assert module in report, f"{module} was never imported: the check would prove nothing"
    late = [m for m, patched in report.items() if not patched]
    assert late == [], f"imported before gevent patched socket: {late}"


def test_importing_the_package_imports_nothing_sensitive() -> None:
    """`import ferryman` (and its config layer) must not pull in pykka/ssl before an entry point patches."""
    report = run_recorded("import ferryman, ferryman.config")
    assert report == {}


def test_recorder_detects_a_broken_order() -> None:
    """Negative control: pykka imported first is reported, and verify() says so too."""
    report = run_recorded(
        "import pykka\nfrom gevent import monkey\nmonkey.patch_all()\n"
        "from ferryman.actors.bootstrap import verify\nprint('VERIFY', verify())"
    )
    assert report["pykka"] is False
    code = (
        "import pykka\nfrom gevent import monkey\nmonkey.patch_all()\n"
        "from ferryman.actors.bootstrap import verify\nprint(verify())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pykka was imported before" in out.stdout


def test_this_test_process_is_patched_first() -> None:
    assert verify() == []
