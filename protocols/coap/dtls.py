"""DTLS (``coaps``) for the coap listener: what this machine can and cannot do.

aiocoap's only DTLS *server* transport is ``tinydtls_server``, built on the ``DTLSSocket`` package (a
Cython wrapper of Eclipse tinydtls). It does pre-shared keys only: no certificates, so the
``[listener.tls]`` certificate settings cannot be honoured, and it binds a single address with its own
simple socket server. aiocoap's other security layers (OSCORE, EDHOC) are not DTLS. Until a DTLS server
with certificates exists for aiocoap, a coap listener with ``[listener.tls]`` is refused by
``validate_settings`` with the reason (docs/coap.md, "DTLS").
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["dtls_backend", "dtls_problems"]


def dtls_backend() -> str | None:
    """The name of the importable DTLS server backend, or None."""
    try:
        if importlib.util.find_spec("DTLSSocket") is not None:
            return "tinydtls (DTLSSocket)"
    except ImportError:
        pass
    return None


def dtls_problems(tls: Any) -> list[str]:
    """Why ``[listener.tls]`` cannot be served on a coap listener (empty: it can)."""
    backend = dtls_backend()
    if backend is None:
        return [
            "DTLS (coaps) is not available: aiocoap's DTLS server needs the DTLSSocket package (tinydtls), "
            "which is not installed; remove [listener.tls] to serve plain coap"
        ]
    return [
        f"DTLS (coaps) with certificates is not available: aiocoap's DTLS server, {backend}, does "
        "pre-shared keys only; remove [listener.tls] to serve plain coap"
    ]
