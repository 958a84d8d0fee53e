"""How a refusal is said in MQTT: CONNACK return codes (3.1.1) and reason codes (5.0)."""

from __future__ import annotations

from ferryman.actors.contracts import RefusalCode

from .constants import ConnackV3, ReasonCode

__all__ = ["connack_code", "disconnect_code", "metric_reason"]

_CONNACK_V3 = {
    RefusalCode.BAD_CREDENTIALS: ConnackV3.BAD_USERNAME_OR_PASSWORD,
    RefusalCode.NOT_AUTHORIZED: ConnackV3.NOT_AUTHORIZED,
    RefusalCode.BANNED: ConnackV3.NOT_AUTHORIZED,
    RefusalCode.SERVER_UNAVAILABLE: ConnackV3.SERVER_UNAVAILABLE,
    RefusalCode.SERVER_BUSY: ConnackV3.SERVER_UNAVAILABLE,
    RefusalCode.SERVER_SHUTTING_DOWN: ConnackV3.SERVER_UNAVAILABLE,
    RefusalCode.QUOTA_EXCEEDED: ConnackV3.SERVER_UNAVAILABLE,
}

_CONNACK_V5 = {
    RefusalCode.BAD_CREDENTIALS: ReasonCode.BAD_USERNAME_OR_PASSWORD,
    RefusalCode.NOT_AUTHORIZED: ReasonCode.NOT_AUTHORIZED,
    RefusalCode.BANNED: ReasonCode.BANNED,
    RefusalCode.SERVER_UNAVAILABLE: ReasonCode.SERVER_UNAVAILABLE,
    RefusalCode.SERVER_BUSY: ReasonCode.SERVER_BUSY,
    # 0x8B is not a CONNACK code; a server that is going away is unavailable to a new client.
    RefusalCode.SERVER_SHUTTING_DOWN: ReasonCode.SERVER_UNAVAILABLE,
    RefusalCode.QUOTA_EXCEEDED: ReasonCode.QUOTA_EXCEEDED,
}

# DISCONNECT (5.0) may carry only some codes: 0x86, 0x88 and 0x8A are CONNACK-only.
_DISCONNECT_V5 = {
    RefusalCode.BAD_CREDENTIALS: ReasonCode.NOT_AUTHORIZED,
    RefusalCode.NOT_AUTHORIZED: ReasonCode.NOT_AUTHORIZED,
    RefusalCode.BANNED: ReasonCode.ADMINISTRATIVE_ACTION,
    # 0x88 is CONNACK-only (a DISCONNECT carrying it is malformed); 0x89 tells the client to come back later.
    RefusalCode.SERVER_UNAVAILABLE: ReasonCode.SERVER_BUSY,
    RefusalCode.SERVER_BUSY: ReasonCode.SERVER_BUSY,
    RefusalCode.SERVER_SHUTTING_DOWN: ReasonCode.SERVER_SHUTTING_DOWN,
    RefusalCode.QUOTA_EXCEEDED: ReasonCode.QUOTA_EXCEEDED,
}


def connack_code(code: RefusalCode, version: int) -> int:
    return int(_CONNACK_V5[code] if version == 5 else _CONNACK_V3[code])


def disconnect_code(code: RefusalCode) -> int:
    return int(_DISCONNECT_V5[code])


def metric_reason(code: RefusalCode) -> str:
    return f"connect_{code.value}"
