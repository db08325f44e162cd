"""Moving payload bytes: encrypt a plaintext stream to a file, or scan (decrypt/hash) a sealed one.

Plaintext only ever lands in caller-owned buffers; each chunk is decrypted straight into its place
with AESGCM.decrypt_into (no bytes objects, no joins), and the ciphertext buffer is reused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

from .errors import FormatError, IntegrityError
from .fileio import readinto_full
from .format.header import TAG_SIZE
from .format.stream import PayloadCipher
from .progress import Progress, no_progress


def encrypt_stream(
    out: BinaryIO,
    fill: Callable[[memoryview], None],
    cipher: PayloadCipher,
    hasher: hashlib._Hash | None = None,
    progress: Progress = no_progress,
) -> None:
    plain = memoryview(bytearray(cipher.chunk_size))
    sealed = memoryview(bytearray(cipher.chunk_size + TAG_SIZE))
    for index in range(cipher.count):
        n = cipher.plain_length(index)
        fill(plain[:n])
        cipher.encrypt_into(index, plain[:n], sealed[: n + TAG_SIZE])
        out.write(sealed[: n + TAG_SIZE])
        if hasher is not None:
            hasher.update(sealed[: n + TAG_SIZE])
        progress(n)
    plain[:] = bytes(len(plain))


def decrypt_stream(
    f: BinaryIO,
    cipher: PayloadCipher,
    sink: memoryview | None,
    hasher: hashlib._Hash | None = None,
    progress: Progress = no_progress,
) -> None:
    """Decrypt every chunk from the current position of ``f`` into ``sink`` (the whole plaintext).

    Without a sink, chunks go into one reused scratch buffer, zeroized at the end: that is how
    `verify` checks a model without holding it. ``hasher`` also sees every ciphertext byte.
    """
    buf = memoryview(bytearray(cipher.chunk_size + TAG_SIZE))
    scratch = memoryview(bytearray(cipher.chunk_size)) if sink is None else None
    try:
        for index in range(cipher.count):
            n = cipher.plain_length(index)
            view = buf[: n + TAG_SIZE]
            try:
                readinto_full(f, view)
            except FormatError:
                raise IntegrityError() from None
            if hasher is not None:
                hasher.update(view)
            if sink is not None:
                offset = index * cipher.chunk_size
                cipher.decrypt_into(index, view, sink[offset : offset + n])
            else:
                assert scratch is not None
                cipher.decrypt_into(index, view, scratch[:n])
            progress(n)
    finally:
        if scratch is not None:
            scratch[:] = bytes(len(scratch))


def hash_stream(f: BinaryIO, hasher: hashlib._Hash, progress: Progress = no_progress) -> None:
    buf = memoryview(bytearray(4 << 20))
    while n := f.readinto(buf):
        hasher.update(buf[:n])
        progress(n)
