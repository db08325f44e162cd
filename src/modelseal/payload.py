"""Moving payload bytes: encrypt a plaintext stream to a file, or scan (decrypt/hash) a sealed one.

Plaintext only ever lands in caller-owned buffers; each chunk is decrypted straight into its place
with AESGCM.decrypt_into (no bytes objects, no joins), and the ciphertext buffer is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from .errors import FormatError, IntegrityError
from .fileio import Readable, readinto_full
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


# Reads go to the kernel in ~4 MiB requests however small the chunks (a 4 KiB-chunk model would
# otherwise cost a syscall and a queue hand-off per 4 KiB).
_SLOT_BYTES = 4 << 20
# A reader thread fills a small ring of reused ciphertext buffers while this thread decrypts: file
# readinto releases the GIL, AESGCM does not, so the read overlaps the decryption on another core
# (measured 1.2-1.4x on 1 GiB; more buffers bought nothing).
_RING_SLOTS = 3
# Past this ring size (chunks of tens of MiB) peak memory matters more than the overlap: read serially.
_RING_BUDGET = 48 << 20


@dataclass(frozen=True)
class _Group:
    """Consecutive chunks read from the file with one request: indexes [first, stop), ``length`` bytes."""

    first: int
    stop: int
    length: int


def _groups(cipher: PayloadCipher) -> list[_Group]:
    stride = cipher.chunk_size + TAG_SIZE
    per_group = max(1, _SLOT_BYTES // stride)
    groups = []
    for first in range(0, cipher.count, per_group):
        stop = min(first + per_group, cipher.count)
        groups.append(_Group(first, stop, (stop - 1 - first) * stride + cipher.cipher_length(stop - 1)))
    return groups


class _ReadAhead:
    """A thread reading groups into free ring slots, in order, and handing them over filled.

    It only ever holds ciphertext. ``close()`` stops and joins it; it must be called on every path.
    """

    def __init__(
        self, f: Readable, groups: list[_Group], slot_size: int, hasher: hashlib._Hash | None
    ) -> None:
        self._f = f
        self._groups = groups
        self._hasher = hasher
        self.slots = [memoryview(bytearray(slot_size)) for _ in range(_RING_SLOTS)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
        for slot in range(_RING_SLOTS):
            self._free.put(slot)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelseal-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for group in self._groups:
                slot = self._free.get()
                if self._stop.is_set():
                    return
                view = self.slots[slot][: group.length]
                readinto_full(self._f, view)
                if self._hasher is not None:
                    self._hasher.update(view)
                self._full.put(slot)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._full.put(e)

    def next(self) -> int:
        """The slot holding the next group; re-raises whatever stopped the reader."""
        item = self._full.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, slot: int) -> None:
        self._free.put(slot)

    def close(self) -> None:
        self._stop.set()
        self._free.put(-1)  # wakes the reader if it waits for a slot; it sees _stop first
        self._thread.join()


def decrypt_stream(
    f: Readable,
    cipher: PayloadCipher,
    sink: memoryview | None,
    hasher: hashlib._Hash | None = None,
    progress: Progress = no_progress,
) -> None:
    """Decrypt every chunk from the current position of ``f`` into ``sink`` (the whole plaintext).

    Without a sink, chunks go into one reused scratch buffer, zeroized at the end: that is how
    `verify` checks a model without holding it. ``hasher`` also sees every ciphertext byte.
    Every chunk is authenticated; a short file or a bad tag raises IntegrityError.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        # Doubles the kernel's readahead window on a cold file; a no-op when it is cached.
        os.posix_fadvise(f.fileno(), f.tell(), 0, os.POSIX_FADV_SEQUENTIAL)
    groups = _groups(cipher)
    slot_size = max(g.length for g in groups)
    scratch = memoryview(bytearray(cipher.chunk_size)) if sink is None else None
    stride = cipher.chunk_size + TAG_SIZE

    def decrypt_group(group: _Group, data: memoryview) -> None:
        for index in range(group.first, group.stop):
            n = cipher.plain_length(index)
            at = (index - group.first) * stride
            if sink is not None:
                offset = index * cipher.chunk_size
                cipher.decrypt_into(index, data[at : at + n + TAG_SIZE], sink[offset : offset + n])
            else:
                assert scratch is not None
                cipher.decrypt_into(index, data[at : at + n + TAG_SIZE], scratch[:n])
            progress(n)

    try:
        if len(groups) == 1 or slot_size * _RING_SLOTS > _RING_BUDGET:
            buf = memoryview(bytearray(slot_size))
            for group in groups:
                view = buf[: group.length]
                readinto_full(f, view)
                if hasher is not None:
                    hasher.update(view)
                decrypt_group(group, view)
        else:
            reader = _ReadAhead(f, groups, slot_size, hasher)
            try:
                for group in groups:
                    slot = reader.next()
                    decrypt_group(group, reader.slots[slot][: group.length])
                    reader.release(slot)
            finally:
                reader.close()
    except FormatError:
        # The file ended early: to the caller that is tampering like any other.
        raise IntegrityError() from None
    finally:
        if scratch is not None:
            scratch[:] = bytes(len(scratch))


def hash_stream(f: Readable, hasher: hashlib._Hash, progress: Progress = no_progress) -> None:
    buf = memoryview(bytearray(4 << 20))
    while n := f.readinto(buf):
        hasher.update(buf[:n])
        progress(n)
