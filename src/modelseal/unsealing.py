"""unseal(): the one explicit way to write plaintext to disk.

The model is fully authenticated in memory first, so a tampered model writes nothing. Output goes
to a temporary sibling that is renamed into place at the end; names come from the authenticated
manifest (already checked to be relative, with no `..`), and files are created with O_EXCL and
O_NOFOLLOW inside folders this function itself created, so nothing can land outside ``out``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import OutputError
from .fileio import atomic_output, fsync_dir
from .opening import Identities, open
from .progress import Progress, no_progress


def _write_file(root: Path, name: str, data: memoryview, executable: bool) -> None:
    target = root.joinpath(*name.split("/"))
    if os.path.commonpath([root, target]) != str(root):
        raise OutputError(f"refusing to write {name!r} outside the output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if executable else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
        raise OutputError(f"{target} already exists; refusing to overwrite it")
    with open(path, identity, signer=signer, progress=progress) as model:
        names = model.names()
        if not model.is_folder:
            with atomic_output(target, overwrite=False) as f:
                f.write(model.read(names[0]))
            return names
        parent = target.absolute().parent
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=parent))
        try:
            for entry in model.entries():
                _write_file(staging.resolve(), entry.name, model.read(entry.name), entry.executable)
            os.rename(staging, target)
            fsync_dir(parent)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
            raise
    return names
