"""Writing a new header for an existing payload: into a new file, or in place.

Neither path touches the payload cipher: a new file gets the payload by a kernel copy
(copy_file_range, a reflink where the filesystem has them); in place rewrites only the header
region, whose length is fixed (and MAC'd), so the payload never moves.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import HeaderRoomError, OutputError, UsageError
from .fileio import atomic_output
from .format.header import Header
from .progress import Progress, no_progress

_COPY_STEP = 1 << 30


def _copy_range(
    src_fd: int, dst_fd: int, src_offset: int, dst_offset: int, count: int, progress: Progress
) -> None:
    while count > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(count, _COPY_STEP), src_offset, dst_offset)
        except OSError:
            n = 0
        if n == 0:
            # Filesystems without copy_file_range support: plain pread/pwrite.
            data = os.pread(src_fd, min(count, 8 << 20), src_offset)
            if not data:
                raise OutputError("the sealed model ended early while it was being copied")
            n = os.pwrite(dst_fd, data, dst_offset)
        src_offset += n
        dst_offset += n
        count -= n
        progress(n)


def write_new_file(
    src: str | os.PathLike[str],
    old: Header,
    new: Header,
    dst: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> None:
    """Write ``new`` followed by the payload of ``src`` (which starts after ``old``) to ``dst``."""
    if Path(dst).resolve() == Path(src).resolve():
        raise UsageError("the output is the input: use in-place mode to rewrite a header in place")
    payload = old.core.payload_ciphertext_length
    with Path(src).open("rb") as fin, atomic_output(dst, overwrite=overwrite) as out:
        out.write(new.encode())
        out.flush()
        _copy_range(fin.fileno(), out.fileno(), old.header_length, new.header_length, payload, progress)


def write_in_place(path: str | os.PathLike[str], old: Header, new: Header) -> None:
    """Overwrite the header region of ``path`` with ``new`` (same length, payload untouched).

    The old header is first saved beside the file and fsynced, so a crash in the middle of the
    rewrite leaves a copy to restore; the backup is removed once the new header is on disk.
    """
    if new.header_length != old.header_length:
        raise HeaderRoomError("in-place rewrap must keep the header length")
    try:
        region = new.encode()
    except OverflowError:
        raise HeaderRoomError(
            f"the new recipients need {new.used_length} header bytes but {path} reserved only "
            f"{old.header_length}: rewrap into a new file instead (-o)"
        ) from None
    target = Path(path)
    backup = target.with_name(target.name + ".header-backup")
    if backup.exists():
        raise OutputError(
            f"{backup} exists: an earlier in-place rewrap was interrupted. Check {target} with "
            f"`modelseal verify`; if it fails, copy the backup over the first {old.header_length} bytes."
        )
    with atomic_output(backup, 0o600, overwrite=False) as b:
        b.write(old.encode())
    fd = os.open(target, os.O_WRONLY)
    try:
        if os.pwrite(fd, region, 0) != len(region):
            raise OutputError(f"short write while rewriting the header of {target}")
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        backup.unlink()
