"""File plumbing shared by every writer: outputs that appear whole or not at all, and full reads.

An output is written into an unnamed file (``O_TMPFILE``) in the destination's folder, fsynced,
then linked to its name: a crash, Ctrl-C, SIGTERM or even SIGKILL at any point leaves no name behind,
and the kernel frees the data with the last descriptor. Where the filesystem has no ``O_TMPFILE``, a
temporary name of modelseal's own pattern is used (``.NAME.PID.RANDOM.mstmp``, mode 0600, removed on
any error); whatever SIGKILL leaves of those, the next modelseal writer into that folder sweeps:
only names of that pattern, only those older than itself whose writing process is gone.

Existing outputs are replaced only when the caller asks (``overwrite=True``; the CLI's ``--force``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import FormatError, ModelSealError, OutputError

TEMP_SUFFIX = ".mstmp"
_TEMP = re.compile(r"^\..*\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.mstmp$", re.DOTALL)
_STARTED = time.time()  # sweeping spares anything this process (or a younger one) may be writing
_NAME_ROOM = 200  # NAME_MAX is 255: room for the dots, pid, random part and suffix
# Filesystems without O_TMPFILE answer one of these (tmpfs, ext4, xfs, btrfs have it).
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT)

FORCE_HINT = "-f/--force replaces it"


def exists_error(path: Path, hint: str | None = FORCE_HINT) -> OutputError:
    return OutputError(f"{path} already exists; refusing to overwrite it" + (f" ({hint})" if hint else ""))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(final: Path) -> Path:
    """A fresh name of the sweepable pattern beside ``final``."""
    return final.with_name(f".{final.name[:_NAME_ROOM]}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sweep_debris(folder: Path) -> list[Path]:
    """Remove what killed modelseal writers left in ``folder``; return what was removed."""
    removed: list[Path] = []
    try:
        entries = os.scandir(folder)
    except OSError:
        return removed
    with entries:
        for entry in entries:
            found = _TEMP.match(entry.name)
            if found is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_mtime >= _STARTED or _writer_alive(int(found["pid"])):
                continue
            path = Path(entry.path)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


def open_unnamed(folder: Path) -> int | None:
    """A new unnamed file (O_TMPFILE, 0600) in ``folder``, or None where the filesystem has none."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno in _NO_TMPFILE:
            return None
        raise


def _open_temp(final: Path, folder: Path) -> tuple[int, Path | None]:
    """A descriptor to write the output through, and its temporary name (None: unnamed)."""
    fd = open_unnamed(folder)
    if fd is not None:
        return fd, None
    named = temp_path(final)
    return os.open(named, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), named


def link_unnamed(fd: int, name: Path) -> None:
    """Give the unnamed file ``fd`` the name ``name`` (never replacing one)."""
    # linkat(AT_SYMLINK_FOLLOW) of the descriptor's /proc entry (the way open(2) documents for
    # O_TMPFILE without CAP_DAC_READ_SEARCH); os.link with only paths calls link(), which would try
    # to link the /proc symlink itself, hence the directory descriptor.
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), name, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _publish(fd: int, named: Path | None, final: Path, overwrite: bool) -> None:
    """Give the finished file its name: link() never replaces a name, rename() does."""
    if named is None:
        if not overwrite:
            link_unnamed(fd, final)
            return
        named = temp_path(final)
        link_unnamed(fd, named)
    if overwrite:
        try:
            os.replace(named, final)
        except BaseException:
            with contextlib.suppress(OSError):
                named.unlink()
            raise
    else:
        try:
            os.link(named, final)
        finally:
            named.unlink()


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    mode: int = 0o644,
    *,
    overwrite: bool = False,
    hint: str | None = FORCE_HINT,
) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only if the block completes without error.

    The data is 0600 while it is written (plaintext never readable by others on the way) and gets
    ``mode`` just before it is named. ``hint`` ends the "already exists" error (None: no hint).
    """
    final = Path(path)
    if not overwrite and (final.exists() or final.is_symlink()):
        raise exists_error(final, hint)
    folder = final.parent if str(final.parent) else Path(".")
    sweep_debris(folder)
    try:
        fd, named = _open_temp(final, folder)
    except OSError as e:
        raise OutputError(f"cannot write in {folder}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            _publish(f.fileno(), named, final, overwrite)
            named = None
        fsync_dir(folder)
    except BaseException as e:
        if named is not None:
            with contextlib.suppress(FileNotFoundError):
                named.unlink()
        if isinstance(e, FileExistsError):
            raise exists_error(final, hint) from None
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise OutputError(f"cannot write {final}: {e.strerror}") from None
        raise


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, overwrite: bool = False
) -> None:
    with atomic_output(path, mode, overwrite=overwrite) as f:
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
