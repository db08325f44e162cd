"""seal(): encrypt, authenticate and optionally sign a model file or folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import sources
from .errors import UsageError
from .fileio import atomic_output
from .format import manifest
from .format.header import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_HEADER_ROOM,
    DIGEST_SIZE,
    MAX_METADATA,
    SALT_SIZE,
    SIGNATURE_SIZE,
    Core,
    check_chunk_size,
    header_length_for,
)
from .format.keys import derive_file_keys
from .format.stream import PayloadCipher
from .header_auth import VERSION, assemble
from .payload import encrypt_stream
from .progress import Progress, no_progress
from .recipients import MEK, Passphrase, Recipient
from .signing import raw_public, sign_core


def keygen(bits: int = 256) -> bytes:
    """A fresh random MEK of 128 or 256 bits."""
    if bits not in (128, 256):
        raise UsageError("a MEK has 128 or 256 bits")
    return os.urandom(bits // 8)


def encode_metadata(metadata: Mapping[str, Any] | None) -> bytes:
    if metadata is None:
        return b"{}"
    try:
        data = json.dumps(
            dict(metadata), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError) as e:
        raise UsageError(f"metadata must be JSON-serializable: {e}") from None
    if len(data) > MAX_METADATA:
        raise UsageError(f"metadata exceeds {MAX_METADATA} bytes")
    return data


@dataclass(frozen=True)
class SealResult:
    path: Path
    files: int
    payload_length: int
    sealed_length: int
    chunk_count: int
    signed: bool


def seal(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    recipients: Sequence[Recipient] = (),
    *,
    mek: bytes | MEK | None = None,
    signer: Ed25519PrivateKey | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metadata: Mapping[str, Any] | None = None,
    header_room: int = DEFAULT_HEADER_ROOM,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> SealResult:
    """Seal ``src`` (a file or a folder) into ``dst``, atomically.

    The file key is ``mek`` when given (then the model opens with that key file), else a fresh
    256-bit key that only ``recipients`` can unwrap. ``header_room`` spare bytes are reserved so
    recipients can later be added in place.
    """
    check_chunk_size(chunk_size)
    if not 0 <= header_room <= 16 << 20:
        raise UsageError("header room must be between 0 and 16 MiB")
    if isinstance(mek, bytes):
        mek = MEK(mek)
    if mek is None and not recipients:
        raise UsageError("nobody could open this model: give a MEK or at least one recipient")
    all_recipients: list[Recipient] = ([mek] if mek is not None else []) + list(recipients)
    if sum(isinstance(r, Passphrase) for r in all_recipients) > 1:
        raise UsageError("a sealed model may hold only one passphrase")
    file_key = mek.key if mek is not None else keygen(256)

    files = sources.collect(src)
    plan, payload_length = sources.plan(files, folder=Path(src).is_dir())
    salt = os.urandom(SALT_SIZE)
    keys = derive_file_keys(file_key, salt)
    signer_key = raw_public(signer.public_key()) if signer is not None else b""
    core = Core(
        salt=salt,
        chunk_size=chunk_size,
        payload_length=payload_length,
        metadata=encode_metadata(metadata),
        manifest=manifest.seal(keys.manifest, manifest.encode(plan)),
        signer_key=signer_key,
        payload_digest=bytes(DIGEST_SIZE) if signer is not None else b"",
    )
    stanzas = [s for r in all_recipients for s in r.wrap(file_key)]
    signature = bytes(SIGNATURE_SIZE) if signer is not None else b""
    draft = assemble(file_key, core, stanzas, 0, signature)
    header_length = header_length_for(draft.used_length, header_room)

    cipher = PayloadCipher(keys.payload, chunk_size, payload_length)
    hasher = hashlib.sha256() if signer is not None else None
    stream = sources.PlainStream(files, plan.entries)
    try:
        with atomic_output(dst, overwrite=overwrite) as out:
            out.seek(header_length)
            encrypt_stream(out, stream.fill, cipher, hasher, progress)
            if hasher is not None and signer is not None:
                core = dataclasses.replace(core, payload_digest=hasher.digest())
                signature = sign_core(signer, VERSION, core.encode())
            header = assemble(file_key, core, stanzas, header_length, signature)
            out.seek(0)
            out.write(header.encode())
            sealed_length = header_length + core.payload_ciphertext_length
    finally:
        stream.close()
    return SealResult(
        Path(dst), len(files), payload_length, sealed_length, core.chunk_count, signer is not None
    )
