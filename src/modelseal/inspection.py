"""inspect(): what anyone can learn from a sealed model without a key."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .format.header import Stanza
from .keyfiles import ed25519_public_string
from .opening import open_sealed_file, read_header
from .recipients.x25519 import slot_of


def stanza_label(stanza: Stanza) -> str:
    """A stable public name for a stanza, accepted by ``rewrap --remove-recipient``."""
    if stanza.type in ("mek", "x25519") and stanza.args:
        return f"{stanza.type}:{stanza.args[0].hex()}"
    if stanza.type == "vault" and len(stanza.args) >= 2:
        name, version = (a.decode("utf-8", "replace") for a in stanza.args[:2])
        return f"vault:{name}:{version}"
    return stanza.type


@dataclass(frozen=True)
class Inspection:
    path: str
    format_version: int
    file_size: int
    header_length: int
    header_room: int
    chunk_size: int
    chunk_count: int
    payload_length: int
    size_consistent: bool
    recipients: list[str]
    devices: dict[str, str]  # recipient label -> device slot, for session keys that name one
    signer: str | None
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect(path: str | os.PathLike[str]) -> Inspection:
    """Parse the header (no key needed). File names stay hidden: the manifest is encrypted."""
    with open_sealed_file(path) as f:
        header = read_header(f)
        size = os.fstat(f.fileno()).st_size
    core = header.core
    metadata = json.loads(core.metadata)  # parse_core has checked it is a JSON object
    signer = (
        ed25519_public_string(Ed25519PublicKey.from_public_bytes(core.signer_key))
        if core.signer_key
        else None
    )
    return Inspection(
        path=str(Path(path)),
        format_version=header.version,
        file_size=size,
        header_length=header.header_length,
        header_room=header.header_length - header.used_length,
        chunk_size=core.chunk_size,
        chunk_count=core.chunk_count,
        payload_length=core.payload_length,
        size_consistent=size == header.header_length + core.payload_ciphertext_length,
        recipients=[stanza_label(s) for s in header.stanzas],
        devices={stanza_label(s): slot for s in header.stanzas if (slot := slot_of(s)) is not None},
        signer=signer,
        metadata=metadata,
    )
