"""loguru set-up. Sinks are added after gevent's monkey-patching and never with ``enqueue=True``
(its worker thread deadlocks the gevent hub)."""

from __future__ import annotations

import sys

from loguru import logger

__all__ = ["LEVELS", "configure_logging"]

LEVELS = ("debug", "info", "warning", "error")
_TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}: {message}"


def configure_logging(level: str = "info", fmt: str = "text", tag: str = "") -> None:
    """``tag``: which process of several writes the line (``ferryman run --workers N``: ``supervisor``,
    ``worker 1``), before the module name in text lines, ``record.extra.process`` in JSON lines."""
    logger.remove()
    if tag:
        logger.configure(extra={"process": tag})
    if fmt == "json":
        logger.add(sys.stderr, level=level.upper(), serialize=True, enqueue=False, backtrace=False)
    else:
        text_format = _TEXT_FORMAT
        if tag:
            text_format = text_format.replace("{name}", tag.replace("{", "{{").replace("}", "}}") + " {name}")
        logger.add(
            sys.stderr,
            level=level.upper(),
            format=text_format,
            enqueue=False,
            backtrace=False,
            diagnose=False,
        )
