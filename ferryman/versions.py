"""The libraries whose private API ferryman overrides or touches, the versions it was tested with, and the
start-up check of the installed ones (``ferryman run`` refuses to start, ``ferryman check`` fails).

A private attribute can change in any release without notice, and the breakage would not always be loud: an
overridden method that is no longer called just stops doing its job. So each such library is pinned to the
range it was tested with, here and in pyproject.toml's dependencies (tests/unit/test_versions.py keeps the
two equal), and a version outside it (installed with ``--no-deps``, or by a later ``pip install`` of
something else) is reported with the library, the installed version and the tested range.

Widening a range is a test run against the new release, then an edit of both places.

The check reads distribution metadata only: it imports none of the libraries, so it may run at any point of
start-up (it needs no gevent patching first). It lives in the face: the CLI runs it; the runtime packages do
not know their own distribution.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

__all__ = ["PINS", "Pin", "check", "release", "untested"]


@dataclass(frozen=True)
class Pin:
    """One library: ``lowest`` <= installed version < ``below``, and what of its private API ferryman uses."""

    distribution: str  # the name pip knows it by
    lowest: str  # tested, inclusive
    below: str  # exclusive: the next release series, not tested
    reason: str  # where ferryman relies on its internals

    @property
    def spec(self) -> str:
        """The range as pyproject.toml writes it: ``>=4.5.0,<4.6``."""
        return f">={self.lowest},<{self.below}"

    def admits(self, version: str) -> bool:
        numbers, pre = release(version)
        lowest, below = release(self.lowest)[0], release(self.below)[0]
        if not numbers:
            return False  # not a version we can read: not one that was tested
        if _compare(numbers, lowest) < 0 or _compare(numbers, below) >= 0:
            return False
        return not (pre and _compare(numbers, lowest) == 0)  # 4.5.0rc1 comes before 4.5.0

    def problem(self, version: str) -> str:
        return (
            f"{self.distribution} {version} is installed, but ferryman is tested with {self.distribution} "
            f"{self.spec} only: {self.reason}, which another release may change without notice. "
            f"Install a tested version: pip install '{self.distribution}{self.spec}'"
        )


#: The pins. Same ranges in pyproject.toml's [project] dependencies.
PINS: tuple[Pin, ...] = (
    Pin(
        "gevent",
        "26.9",
        "27",
        "the HTTP listener (protocols/http/server.py, app.py) subclasses pywsgi's Input and sets its private "
        "_chunked_input_error slot to stop reading a body it has refused",
    ),
    Pin(
        "pykka",
        "4.5.0",
        "4.6",
        "GreenletActor and SessionActor (actors/greenlet_actor.py, actors/session.py) override Pykka's actor "
        "loop internals (_create_actor_inbox, _start_actor_loop, _actor_loop_setup / _running / _teardown, "
        "_stop, _handle_failure) and actors/bootstrap.py reads ActorRegistry._actor_refs_lock",
    ),
    Pin(
        "paho-mqtt",
        "2.2.0",
        "2.3",
        "the bridge client (protocols/mqtt/bridge_client.py) overrides paho's _packet_write and edits its "
        "private outgoing queue (_out_packet, _out_messages, _inflight_messages, _sockpairW)",
    ),
    Pin(
        "aiocoap",
        "0.4.17",
        "0.4.18",
        "the CoAP listener (protocols/coap/) wraps aiocoap's transport internals (the message interface's "
        "datagram_msg_received, send, _pool and _transport; tinydtls_server's private classes)",
    ),
)

_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+)*)(.*)$", re.I)
_PRE = re.compile(r"^[-_.]?(a|b|c|rc|alpha|beta|pre|preview|dev)", re.I)


def release(version: str) -> tuple[tuple[int, ...], bool]:
    """The release numbers of a version and whether it is a pre-release or development release:
    ``"4.5.0"`` -> ``((4, 5, 0), False)``, ``"2.3.0rc1"`` -> ``((2, 3, 0), True)``, ``"0.4.17.post1"`` ->
    ``((0, 4, 17), False)`` (a post-release is its release), unreadable -> ``((), False)``."""
    match = _VERSION.match(version)
    if match is None:
        return (), False
    numbers = tuple(int(part) for part in match.group(1).split("."))
    return numbers, _PRE.match(match.group(2)) is not None


def _compare(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    width = max(len(a), len(b))
    a, b = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
    return (a > b) - (a < b)


def untested(tested: tuple[Pin, ...] = PINS) -> list[str]:
    """One message for every pinned library that is missing or installed outside its tested range."""
    problems: list[str] = []
    for lib in tested:
        try:
            version = metadata.version(lib.distribution)
        except metadata.PackageNotFoundError:
            problems.append(
                f"{lib.distribution} is not installed: ferryman needs {lib.distribution}{lib.spec} "
                f"(pip install '{lib.distribution}{lib.spec}')"
            )
            continue
        if not lib.admits(version):
            problems.append(lib.problem(version))
    return problems


def check(report: Callable[[str], object]) -> bool:
    """Report every untested library version through ``report``; True when there is none (start-up may
    go on)."""
    problems = untested()
    for problem in problems:
        report(problem)
    return not problems
