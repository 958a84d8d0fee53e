"""The supervisor's error, in a module of its own: listeners raise it too and so never import the
supervisor (``actors/gateway.py``)."""

from __future__ import annotations

__all__ = ["GatewayError"]


class GatewayError(Exception):
    """The gateway cannot start with these settings (a clear message, no traceback needed)."""
