"""The rule-set API: the actor base class of everything the Router delivers bridge messages to.

A *rule actor* (a rule set, a bridge) is a Pykka actor registered with the Router for the message kinds it
handles (``Router.register(kind, ref, match=..., claim=...)``); the Router ``tell``s it every such
``Message`` through ``handle``. It answers through the sessions and ports it was given in its constructor.
Rule actors are not part of the authorization chain: authorization is the job of ``HandlerActor``s
(``actors/handler.py``), which sessions ask once per connection.

Rule sets found by name come from the entry-point group ``ferryman.rules``: a ``RuleActor`` subclass with a
classmethod ``start_rule(context)`` (see ``RuleContext``) that starts it and registers it with the Router.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pykka
from loguru import logger

from .contracts import Message

__all__ = ["RULES_GROUP", "RuleActor", "RuleContext"]

RULES_GROUP = "ferryman.rules"


@dataclass(frozen=True)
class RuleContext:
    """What a rule set plug-in is started with: the settings, its own options, the Router it registers
    with, and the ports the bridge offers by name (``"xmpp"``: the XMPP session actor's ref, ``"mqtt"``:
    the bridge's MQTT session actor's ref, ``"metrics"``...). Nothing is looked up: a rule set uses what is
    in here or does without."""

    settings: Any
    router: pykka.ActorRef[Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    ports: Mapping[str, Any] = field(default_factory=dict)


class RuleActor(pykka.ThreadingActor):
    """Base class of rule actors (bridges, rule sets such as smartgrid).

    Built with ``cls(options=..., settings=..., router=...)`` plus whatever the subclass needs (keyword
    arguments). Override ``handle``; ``reload`` gets new settings on SIGHUP when the rule's owner passes
    them on.
    """

    #: Name used in logs and as the entry-point name in ``ferryman.rules``; defaults to the class name.
    name: ClassVar[str] = ""

    def __init__(self, *, options: Mapping[str, Any] | None = None, settings: Any = None, router: Any = None):
        super().__init__()
        self.options: Mapping[str, Any] = options or {}
        self.settings = settings
        self.router = router

    @classmethod
    def start_rule(cls, context: RuleContext) -> list[Any]:
        """Start this rule set for ``context`` and register it with ``context.router``; returns what it
        started, in start order (stopped in reverse). Rule sets found by name override it."""
        raise NotImplementedError(f"{cls.__name__} cannot be started by name (no start_rule)")

    def handle(self, message: Message) -> None:
        """A message the Router delivers to this rule actor."""

    def reload(self, settings: Any) -> None:
        self.settings = settings

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        logger.opt(exception=(exception_type, exception_value, traceback)).error(
            "rule actor {} failed", type(self).__name__
        )
