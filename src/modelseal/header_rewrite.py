"""Writing a new header for an existing payload: into a new file, or in place.

Neither path touches the payload cipher: a new file gets the payload by a kernel copy
(copy_file_range, a reflink where the filesystem has them); in place rewrites only the header
region, whose length is fixed (and MAC'd), so the payload never moves, through a journal that
makes an interrupted rewrite finish on the next open.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import HeaderRoomError, OutputError, UsageError
from .fileio import atomic_output, atomic_write_bytes, fsync_dir, read_small_file
from .format.header import MAX_HEADER_LENGTH, Header, parse_header
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


JOURNAL_MAGIC = b"modelseal in-place rewrap journal 1\n"
_DIGEST = 32


def journal_path(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    return target.with_name(f".{target.name}.rewrap-journal")


def write_in_place(path: str | os.PathLike[str], old: Header, new: Header) -> None:
    """Overwrite the header region of ``path`` with ``new`` (same length, payload untouched).

    The new header is first journaled beside the file (whole or not at all, fsynced), then written,
    then the journal removed. A crash in between leaves the journal: the next command that opens the
    file rolls it forward (:func:`recover_in_place`), with no key and nothing to restore by hand.
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
    with _locked(target, blocking=True) as fd:
        assert fd is not None
        _roll_forward(target, fd)
        journal = journal_path(target)
        record = JOURNAL_MAGIC + region + hashlib.sha256(JOURNAL_MAGIC + region).digest()
        atomic_write_bytes(journal, record, 0o600)
        _write_header(target, fd, region)
        journal.unlink(missing_ok=True)
        fsync_dir(target.parent if str(target.parent) else Path("."))


def recover_in_place(path: str | os.PathLike[str]) -> bool:
    """Finish an in-place rewrap of ``path`` that was interrupted; True if one was.

    The journal holds the whole new header; the parts a rewrap never changes (preamble, core, MAC,
    signature) must match the file's, else the journal belongs to a file since replaced and is
    dropped. Skipped when the file cannot be written here (a reader without write access then sees
    whichever header is on disk, which authenticates or fails closed) or a rewrap holds its lock.
    """
    target = Path(path)
    if not journal_path(target).exists():
        return False
    with _locked(target, blocking=False) as fd:
        return fd is not None and _roll_forward(target, fd)


@contextlib.contextmanager
def _locked(target: Path, *, blocking: bool) -> Iterator[int | None]:
    """The file opened for writing under an exclusive flock (None: not writable here, or busy)."""
    try:
        fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        if blocking:
            raise OutputError(f"cannot rewrite the header of {target}: {e.strerror}") from None
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def _roll_forward(target: Path, fd: int) -> bool:
    journal = journal_path(target)
    try:
        limit = len(JOURNAL_MAGIC) + MAX_HEADER_LENGTH + _DIGEST
        record = read_small_file(journal, limit, "rewrap journal", OutputError)
    except OutputError:
        if journal.exists():
            raise
        return False  # finished by someone else meanwhile
    region, digest = record[len(JOURNAL_MAGIC) : -_DIGEST], record[-_DIGEST:]
    if not record.startswith(JOURNAL_MAGIC) or not hmac.compare_digest(
        hashlib.sha256(record[:-_DIGEST]).digest(), digest
    ):
        raise OutputError(f"{journal} is not a modelseal rewrap journal: move it away and verify {target}")
    header = parse_header(region)
    fixed = len(header.preamble_and_core) + len(header.mac) + len(header.signature)
    if os.pread(fd, fixed, 0) != region[:fixed]:
        journal.unlink(missing_ok=True)  # stale: this file is not the one the journal was made for
        return False
    _write_header(target, fd, region)
    journal.unlink(missing_ok=True)
    fsync_dir(target.parent if str(target.parent) else Path("."))
    return True


def _write_header(target: Path, fd: int, region: bytes) -> None:
    try:
        if os.pwrite(fd, region, 0) != len(region):
            raise OutputError(f"short write while rewriting the header of {target}")
        os.fsync(fd)
    except OSError as e:
        raise OutputError(f"cannot rewrite the header of {target}: {e.strerror}") from None
