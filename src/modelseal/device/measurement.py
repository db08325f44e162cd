"""What software a card runs: the measurement its reports carry.

A real card measures its firmware in hardware; the emulated card hashes the source of the modelseal
code it runs to open and execute models, so an owner who installed the same release can compute the
value it expects (`modelseal device measure`) and refuse a card running anything else. Host-side
tools (cli, cfs, the edge agent) and the key service are not part of the card and are left out, so
changing them does not change the measurement; the vault's errors, which the release wire format
(keyrelease/) the card runs to open released keys raises, are the exception.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UsageError

_EXCLUDED = {"agent", "cli", "cfs", "vault", "__pycache__"}
# The card opens keys the vault released to it with keyrelease/ (measured like all the card's code),
# which raises the vault's errors: that much of vault/ runs on the card, so it is measured.
_CARD_FILES = {"vault/__init__.py", "vault/errors.py"}
MEASUREMENT_SIZE = 32


def _package_root() -> Path:
    return Path(__file__).resolve().parent.parent


def measured_files(root: Path | None = None) -> list[Path]:
    base = root or _package_root()
    found = [
        p
        for p in base.rglob("*")
        if p.suffix in {".py", ".proto"}
        and p.is_file()
        and (p.relative_to(base).as_posix() in _CARD_FILES or not _EXCLUDED & set(p.relative_to(base).parts))
    ]
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def software_measurement(root: Path | None = None) -> bytes:
    """SHA-256 over (relative path, size, content) of every measured file, in path order."""
    base = root or _package_root()
    h = hashlib.sha256(b"modelseal/v1 device measurement\x00")
    for path in measured_files(base):
        data = path.read_bytes()
        name = path.relative_to(base).as_posix().encode()
        h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def parse_measurement(text: str) -> bytes:
    """A measurement given as 64 hex digits (what `modelseal device measure` prints)."""
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        raise UsageError(f"a measurement is {MEASUREMENT_SIZE * 2} hex digits, not {text!r}") from None
    if len(value) != MEASUREMENT_SIZE:
        raise UsageError(f"a measurement is {MEASUREMENT_SIZE * 2} hex digits, not {len(value) * 2}")
    return value
