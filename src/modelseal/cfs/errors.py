"""Errors of the Crypto-fs: part of the ModelSealError tree, so the CLI prints one line for them."""

from __future__ import annotations

from ..errors import ModelSealError


class CfsError(ModelSealError):
    """The filesystem or the runner cannot start (no FUSE, mount refused, mlock required and refused)."""

    exit_code = 10
