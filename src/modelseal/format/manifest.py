"""The encrypted manifest: which files a sealed model holds and where they lie in the payload.

File names are confidential, so the manifest is AES-256-GCM encrypted under a key derived from the
file key and salt (unique per file, so a fixed zero nonce is safe) and sits inside the MAC'd core.
Each file starts on a 4096-byte boundary of the plaintext stream so runtimes that want page-aligned
weights get them; the gaps are zeros and are authenticated like every other payload byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import FormatError, IntegrityError

FILE_ALIGN = 4096
MAX_FILES = 100_000
MAX_NAME = 4096
_NONCE = bytes(12)
_AAD = b"modelseal/v1 manifest"


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    offset: int
    size: int
    executable: bool = False


def check_name(name: str) -> str:
    """Accept only a normalized relative POSIX path that cannot escape the folder it is put in."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"invalid file name in manifest: {name!r} is not valid UTF-8") from None
    if not name or len(encoded) > MAX_NAME:
        raise FormatError("invalid file name in manifest: empty or too long")
    if "\x00" in name or "\\" in name or name.startswith("/"):
        raise FormatError(f"invalid file name in manifest: {name!r}")
    for part in name.split("/"):
        if part in ("", ".", "..") or len(part.encode("utf-8")) > 255:
            raise FormatError(f"invalid file name in manifest: {name!r}")
    return name


def layout(named_sizes: Sequence[tuple[str, int, bool]]) -> tuple[list[ManifestEntry], int]:
    """Place files one after another, each aligned to FILE_ALIGN; return entries and payload length."""
    entries = []
    offset = 0
    for name, size, executable in named_sizes:
        offset = -(-offset // FILE_ALIGN) * FILE_ALIGN
        entries.append(ManifestEntry(check_name(name), offset, size, executable))
        offset += size
    check_entries(entries, offset)
    return entries, offset


def check_entries(entries: Sequence[ManifestEntry], payload_length: int) -> None:
    if len(entries) > MAX_FILES:
        raise FormatError("manifest lists too many files")
    names: set[str] = set()
    end = 0
    for e in entries:
        check_name(e.name)
        if e.name in names:
            raise FormatError(f"duplicate file name in manifest: {e.name!r}")
        names.add(e.name)
        if e.offset < end or e.size < 0 or e.offset + e.size > payload_length:
            raise FormatError("manifest file ranges overlap or exceed the payload")
        end = e.offset + e.size
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                raise FormatError(f"manifest names both a file and a folder: {'/'.join(parts[:i])!r}")


@dataclass(frozen=True)
class Manifest:
    entries: list[ManifestEntry]
    folder: bool  # sealed from a folder (unseal recreates one) rather than a single file


def encode(m: Manifest) -> bytes:
    rows = [[e.name, e.offset, e.size, int(e.executable)] for e in m.entries]
    doc = {"kind": "folder" if m.folder else "file", "files": rows}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(data: bytes, payload_length: int) -> Manifest:
    try:
        doc = json.loads(data.decode("utf-8"))
        kind = doc["kind"]
        rows = doc["files"]
        if kind not in ("file", "folder") or (kind == "file" and len(rows) != 1):
            raise ValueError
        if not isinstance(rows, list) or len(rows) > MAX_FILES:
            raise ValueError
        entries = []
        for row in rows:
            name, offset, size, executable = row
            if not (isinstance(name, str) and type(offset) is int and type(size) is int):
                raise ValueError
            if type(executable) is not int or executable not in (0, 1):
                raise ValueError
            entries.append(ManifestEntry(name, offset, size, executable == 1))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise FormatError("malformed manifest") from None
    check_entries(entries, payload_length)
    return Manifest(entries, kind == "folder")


def seal(manifest_key: bytes, plaintext: bytes) -> bytes:
    return AESGCM(manifest_key).encrypt(_NONCE, plaintext, _AAD)


def unseal(manifest_key: bytes, ciphertext: bytes) -> bytes:
    try:
        return AESGCM(manifest_key).decrypt(_NONCE, ciphertext, _AAD)
    except InvalidTag:
        raise IntegrityError() from None
