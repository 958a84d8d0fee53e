"""The outcomes of a revocation check other than "good"."""

from __future__ import annotations

__all__ = ["NotGood", "StatusUnavailable"]


class NotGood(Exception):
    """A valid answer says the certificate is not good (revoked, or unknown to its CA's responder).
    Always refused, whatever ``revocation_fail_open`` says."""


class StatusUnavailable(Exception):
    """No valid answer could be had: responder or distribution point unreachable, a response or CRL that
    fails verification (signature, certificate id, nonce, validity window). Refused unless
    ``revocation_fail_open``."""
