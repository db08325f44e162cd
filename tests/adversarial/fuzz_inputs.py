"""Inputs and the one target shared by the hypothesis and atheris fuzzers of the header parser.

``check_one(data)`` runs a file's bytes through what a reader does before any payload chunk:
``read_header`` on a real file descriptor (a memfd, so the preamble checks, the file-size check and
the header allocation are the real ones), then ``unlock`` with a MEK and an X25519 identity (stanza
unwrapping, HPKE on hostile bodies, the header and stanza MACs). It returns normally or raises one
of the documented failure classes; anything else is a bug. It also records every buffer read_header
allocates, which must never exceed the file (a declared length alone must not drive an allocation).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import modelseal
from modelseal import opening
from modelseal.format.header import MAGIC, PREAMBLE, VERSION, Header
from modelseal.header_auth import unlock

# What a hostile header may make a reader raise (UnsupportedVersionError is a FormatError).
EXPECTED = (modelseal.FormatError, modelseal.IntegrityError, modelseal.NoMatchingIdentityError)

# Fixed keys (the same in the atheris subprocess): the seed header is sealed to them, so mutations
# that leave the MAC'd part alone get past key commitment and reach the stanza MACs.
FUZZ_MEK = modelseal.MEK(bytes(range(32)))
FUZZ_IDENTITY = modelseal.X25519Identity(X25519PrivateKey.from_private_bytes(bytes(range(32, 64))))
_IDENTITIES: list[modelseal.Identity] = [FUZZ_MEK, FUZZ_IDENTITY]


class AllocationGuard:
    """Replaces ``bytearray`` inside modelseal.opening to record the sizes read_header asks for."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, size: int) -> bytearray:
        self.sizes.append(size)
        return bytearray(size)

    def __enter__(self) -> AllocationGuard:
        opening.bytearray = self  # type: ignore[attr-defined]
        return self

    def __exit__(self, *_: object) -> None:
        del opening.bytearray  # type: ignore[attr-defined]


def read_header_from_memory(data: bytes) -> Header:
    fd = os.memfd_create("modelseal-fuzz", os.MFD_CLOEXEC)
    with io.FileIO(fd, "r+", closefd=True) as f:
        f.write(data)
        f.seek(0)
        return opening.read_header(f)


def check_one(data: bytes, guard: AllocationGuard | None = None) -> Header | None:
    """Parse and try to unlock ``data``; None if it was refused with a documented error."""
    if guard is not None:
        guard.sizes.clear()
    try:
        header = read_header_from_memory(data)
    except EXPECTED:
        header = None
    if guard is not None:
        largest = max(guard.sizes, default=0)
        assert largest <= max(len(data), 20), f"allocated {largest} bytes for a {len(data)}-byte file"
    if header is None:
        return None
    # What parses re-encodes to the same bytes: no field is silently ignored.
    assert header.encode() == data[: header.header_length]
    with contextlib.suppress(*EXPECTED):
        unlock(header, _IDENTITIES)
    return header


def real_header(folder: Path) -> bytes:
    """The header of a model with every stanza type, signed, with metadata (a mutation seed)."""
    src = folder / "m.bin"
    src.write_bytes(b"w" * 5000)
    out = folder / "m.mseal"
    modelseal.seal(
        src,
        out,
        [FUZZ_IDENTITY.recipient, modelseal.Passphrase(b"p", log_n=10)],
        mek=FUZZ_MEK,
        signer=modelseal.generate_signer(),
        chunk_size=4096,
        metadata={"name": "tiny", "v": [1, 2.5, None, True]},
        header_room=0,
    )
    data = out.read_bytes()
    return data[: struct.unpack_from(">I", data, 12)[0]]


def preamble(header_length: int, core_length: int, version: int = VERSION, reserved: int = 0) -> bytes:
    return PREAMBLE.pack(MAGIC, version, reserved, header_length, core_length)
