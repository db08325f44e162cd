"""unseal(): the one explicit way to write plaintext to disk.

The model is fully authenticated in memory first, so a tampered model writes nothing. A one-file
model goes through fileio.atomic_output (an unnamed file linked at the end: no name survives a
kill); a folder's files are written unnamed too and linked at the end into a private (0700) staging
folder of fileio's sweepable pattern, renamed into place (it stays 0700). Names come from the
authenticated manifest (already checked to be relative, with no `..`), and files are created with
O_EXCL and O_NOFOLLOW inside folders this function itself created, so nothing can land outside ``out``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import OutputError
from .fileio import (
    atomic_output,
    exists_error,
    fsync_dir,
    link_unnamed,
    open_unnamed,
    sweep_debris,
    temp_path,
)
from .opening import Identities, SealedModel, open
from .progress import Progress, no_progress

NEVER_REPLACED = "unseal never replaces an output: remove it or choose another"


def _place(root: Path, name: str) -> Path:
    """Where manifest entry ``name`` goes under ``root``, its folders made."""
    target = root.joinpath(*name.split("/"))
    if os.path.commonpath([root, target]) != str(root):
        raise OutputError(f"refusing to write {name!r} outside the output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _fill(fd: int, data: memoryview, executable: bool) -> None:
    view = data.cast("B")
    while view:
        view = view[os.write(fd, view) :]
    os.fchmod(fd, 0o755 if executable else 0o644)
    os.fsync(fd)


def _hold_at_most() -> int:
    """How many unnamed files a folder unseal keeps open at once (a quarter of the fd limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 256 if soft == resource.RLIM_INFINITY else min(256, soft // 4)


def _write_folder(model: SealedModel, target: Path) -> None:
    """Every file is written unnamed and held open; only then are they linked into a private
    staging folder, renamed into place at once. A kill while writing leaves nothing on disk; only
    during the few link() calls at the end can one leave the staging folder for the next writer's
    sweep. Folders with more files than we may hold open are written into the staging folder."""
    parent = target.absolute().parent
    sweep_debris(parent)
    staging = temp_path(target.absolute())
    entries = model.entries()
    held: list[int] = []
    try:
        while len(entries) <= _hold_at_most() and len(held) < len(entries):
            fd = open_unnamed(parent)
            if fd is None:
                break
            held.append(fd)
            entry = entries[len(held) - 1]
            _fill(fd, model.read(entry.name), entry.executable)
        try:
            staging.mkdir(0o700)
        except OSError as e:
            raise OutputError(f"cannot write in {parent}: {e.strerror}") from None
        root = staging.resolve()
        all_held = len(held) == len(entries)
        for i, entry in enumerate(entries):
            place = _place(root, entry.name)
            if all_held:
                link_unnamed(held[i], place)
                continue
            fd = os.open(place, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                _fill(fd, model.read(entry.name), entry.executable)
            finally:
                os.close(fd)
        # rename() would replace an empty folder that appeared meanwhile: refuse it instead.
        if target.exists() or target.is_symlink():
            raise exists_error(target, NEVER_REPLACED)
        os.rename(staging, target)
        fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
    finally:
        for fd in held:
            os.close(fd)


def unseal(
    path: str | os.PathLike[str],
    identity: Identities,
    out: str | os.PathLike[str],
    *,
    signer: Ed25519PublicKey | None = None,
    progress: Progress = no_progress,
) -> list[str]:
    """Decrypt ``path`` to ``out`` (a file for a one-file model, else a folder); never overwrites."""
    target = Path(out)
    if target.exists() or target.is_symlink():
        raise exists_error(target, NEVER_REPLACED)
    with open(path, identity, signer=signer, progress=progress) as model:
        names = model.names()
        if model.is_folder:
            _write_folder(model, target)
        else:
            with atomic_output(target, overwrite=False, hint=NEVER_REPLACED) as f:
                f.write(model.read(names[0]))
    return names
