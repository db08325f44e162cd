"""Open every sealed model before serving anything, and lay their files out in one tree.

Layout (the same for ``mount`` and ``run``):

* ``merge`` (default): every model's files appear at the root under their own names, so a sealed
  ``model.onnx`` is ``DIR/model.onnx`` and a sealed folder's ``weights/model.bin`` is
  ``DIR/weights/model.bin``. Two models that would put something at the same path (same file
  name, or a file where another model needs a folder) are refused before anything is served.
* ``per-model``: each model gets its own folder named after the sealed file without its
  ``.mseal`` suffix (``a.mseal`` -> ``DIR/a/...``); two sealed files with the same name are refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import modelseal
from modelseal import Identity, SealedModel, UsageError

from ..memlimits import check_room
from ..memlock import LockPolicy

Layout = Literal["merge", "per-model"]
LAYOUTS: tuple[Layout, ...] = ("merge", "per-model")
CacheMode = Literal["keep", "open", "direct"]
CACHE_MODES: tuple[CacheMode, ...] = ("keep", "open", "direct")
Identities = Identity | Sequence[Identity]
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ServedFile:
    path: str  # relative POSIX path in the served tree
    view: memoryview  # read-only plaintext, valid until OpenedModels.close()
    executable: bool


@dataclass
class OpenedModels:
    models: list[SealedModel]
    files: list[ServedFile]
    locked: bool
    sources: list[Path] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        return sum(len(f.view) for f in self.files)

    def close(self) -> None:
        """Zeroize every plaintext buffer (idempotent)."""
        for m in self.models:
            m.close()


def _prefix(path: Path) -> str:
    name = path.name.removesuffix(".mseal")
    if not name or name in (".", ".."):
        raise UsageError(f"cannot name a folder after {path} (per-model layout)")
    return name


def check_layout(planned: Sequence[tuple[str, Path]]) -> None:
    """Refuse two models claiming one path, or one's file standing where another needs a folder."""
    files: dict[str, Path] = {}
    dirs: dict[str, Path] = {}
    for name, source in planned:
        if name in files:
            raise UsageError(f"{name!r} is in both {files[name]} and {source}: serve them separately")
        files[name] = source
        parts = name.split("/")
        for i in range(1, len(parts)):
            dirs.setdefault("/".join(parts[:i]), source)
    for name, source in files.items():
        if name in dirs:
            raise UsageError(
                f"{name!r} is a file in {source} and a folder in {dirs[name]}: serve them separately"
            )


def open_models(
    sealed: Sequence[PathLike],
    identity: Identities,
    *,
    signer: Ed25519PublicKey | None = None,
    layout: Layout = "merge",
    lock: LockPolicy | None = None,
    lock_views: bool = True,
    copies: int = 1,
) -> OpenedModels:
    """Authenticate and decrypt every model completely, lock the plaintext, and plan the tree.

    Raises before returning if any model fails a check, so a caller never serves a byte of it.
    ``copies`` is how many times the plaintext will be held at once (for the memory check).
    ``lock_views=False`` only prechecks the limit: for callers that copy the plaintext elsewhere
    and lock that copy instead.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    paths = [Path(p) for p in sealed]
    if not paths:
        raise UsageError("give at least one sealed model")
    if layout == "per-model":
        prefixes = [_prefix(p) for p in paths]
        for i, name in enumerate(prefixes):
            if name in prefixes[:i]:
                raise UsageError(f"two sealed models would both be served as folder {name!r}")
    lock = lock or LockPolicy()
    # Keyless header reads: a model set that cannot fit in memory (``copies`` times: cfs run holds
    # its memfds beside the plaintext until all are filled), or a --require-mlock refusal, comes
    # before any decryption work.
    total = sum(modelseal.inspect(p).payload_length for p in paths)
    check_room(copies * total, f"serving {len(paths)} model(s)")
    lock.precheck(total)
    opened: list[SealedModel] = []
    try:
        planned: list[tuple[str, Path]] = []
        files: list[ServedFile] = []
        for path in paths:
            model = modelseal.open(path, identity, signer=signer)
            opened.append(model)
            for entry in model.entries():
                name = f"{_prefix(path)}/{entry.name}" if layout == "per-model" else entry.name
                planned.append((name, path))
                files.append(ServedFile(name, model.read(entry.name), entry.executable))
        check_layout(planned)
        files.sort(key=lambda f: f.path)
        locked = lock.lock([f.view for f in files]) if lock_views else False
    except BaseException:
        for m in opened:
            m.close()
        raise
    return OpenedModels(opened, files, locked, paths)
