"""What the device routes and the release decision share: name rules, times, the one refusal, and
the shape of a decision."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...keyrelease.wire import DEFAULT_DOMAIN
from ..errors import KeyServiceError, PermissionDenied
from .barrier import Barrier
from .schema import Device

MAX_GROUPS = 32

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

class ReleaseDenied(PermissionDenied):
    """Every refused release, whatever the reason: the caller must not learn which check failed."""

    code = "release_denied"

    def __init__(self) -> None:
        super().__init__("key release refused")

@dataclass
class Decision:
    """What one device request decided: ``reason`` None means allowed. ``details`` go to its audit
    record, under ``domain`` (the claimed domain only once it is known to exist); ``sealed`` is a
    granted release's HPKE-sealed file key."""

    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    domain: str = DEFAULT_DOMAIN
    sealed: bytes | None = None


def check_id(kind: str, name: str) -> None:
    if not ID_PATTERN.fullmatch(name):
        raise KeyServiceError(
            f"a {kind} name is 1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            code="invalid_name",
        )

def check_names(kind: str, values: list[str]) -> list[str]:
    if len(values) > MAX_GROUPS:
        raise KeyServiceError(f"at most {MAX_GROUPS} {kind}s", code="invalid_request")
    for value in values:
        check_id(kind, value)
    return sorted(set(values))

def iso_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

def parse_time(text: str) -> float:
    """ISO 8601; a time without a zone is taken as UTC (licences are written in UTC)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KeyServiceError("not_after is not an ISO 8601 time", code="invalid_request") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def psk_row(device: Device) -> str:
    """The barrier row of a device's PSK: a new generation makes the old ciphertext useless."""
    return f"{device.domain_id}/{device.name}/{device.psk_generation}"


def identity_row(device: Device) -> str:
    return f"{device.domain_id}/{device.name}/{device.identity_generation}"


def identity_of(barrier: Barrier, device: Device) -> tuple[bytes, bytes | None] | None:
    """The enrolled (Ed25519 public key, expected measurement or None), or None."""
    if device.identity is None:
        return None
    plain = barrier.decrypt(device.identity, table="devices", row=identity_row(device), purpose="identity")
    return plain[:32], plain[32:] or None
