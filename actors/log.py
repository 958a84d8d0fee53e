"""loguru set-up. Sinks are added after gevent's monkey-patching and never with ``enqueue=True``
(its worker thread deadlocks the gevent hub)."""

from __future__ import annotations

import sys

from loguru import logger

__all__ = ["LEVELS", "configure_logging"]

LEVELS = ("debug", "info", "warning", "error")
_TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}: {message}"


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    logger.remove()
    if fmt == "json":
        logger.add(sys.stderr, level=level.upper(), serialize=True, enqueue=False, backtrace=False)
    else:
        logger.add(
            sys.stderr,
            level=level.upper(),
            format=_TEXT_FORMAT,
            enqueue=False,
            backtrace=False,
            diagnose=False,
        )
