"""Errors of the device flow: a card that refuses or fails, and a report that must not be trusted."""

from __future__ import annotations

from ..errors import ModelSealError


class DeviceError(ModelSealError):
    """A card could not be reached, or refused a request (its one-line reason is in the message)."""

    exit_code = 11


class AttestationError(DeviceError):
    """An attestation report is forged, from another device or request, stale, or measures other code."""
