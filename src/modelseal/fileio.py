"""File plumbing shared by every writer: atomic outputs and full reads.

A crash never leaves a half-written output: data goes to a temporary file in the destination's
folder, is fsynced, then renamed over the final name, and the folder is fsynced.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import FormatError, ModelSealError, OutputError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], mode: int = 0o644, *, overwrite: bool = True
) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only if the block completes without error."""
    final = Path(path)
    if not overwrite and final.exists():
        raise OutputError(f"{final} already exists; refusing to overwrite it")
    folder = final.parent if str(final.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot write in {folder}: {e.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not overwrite:
            # link() fails if the name appeared meanwhile, where rename() would replace it.
            os.link(tmp, final)
            os.unlink(tmp)
        else:
            os.replace(tmp, final)
        fsync_dir(folder)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, FileExistsError):
            raise OutputError(f"{final} already exists; refusing to overwrite it") from None
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise OutputError(f"cannot write {final}: {e.strerror}") from None
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    with atomic_output(path, mode) as f:
        f.write(data)


Readable = io.RawIOBase | io.BufferedIOBase


def readinto_full(f: Readable, view: memoryview) -> None:
    """Fill ``view`` completely: unbuffered reads on cold files return short counts."""
    done = 0
    total = len(view)
    while done < total:
        n = f.readinto(view[done:])
        if not n:
            raise FormatError("the file ended before its declared length (truncated?)")
        done += n


def read_small_file(
    path: str | os.PathLike[str], limit: int, what: str, error: type[ModelSealError]
) -> bytes:
    """The whole of a file that must be small (keys, bundles, reports): never more than ``limit`` read."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is larger than {limit} bytes")
    return data
