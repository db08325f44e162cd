"""Crypto-fs: serve sealed models' decrypted files from locked memory, never from disk.

Two ways to hand an unmodified inference app its model files as plain paths:

* :func:`mount` / :func:`spawn_mount`: a read-only FUSE filesystem (pyfuse3 + trio; ``pip install
  'modelseal[cfs]'`` and libfuse3) at a folder. Only the allowed uids (default: the mounting user)
  may look up, list or read; everyone else gets EACCES. No writes (EROFS), no xattrs, no special
  files. SIGTERM, SIGINT or SIGHUP unmount cleanly and zeroize the plaintext.
* :func:`run`: where FUSE is missing, run a command with every file in a sealed memfd it inherits,
  found through ``$MODELSEAL_DIR`` (a private folder of links) and ``$MODELSEAL_FILES`` (JSON).

Both authenticate every model completely (``modelseal.open``) before serving or starting anything:
a tampered model raises and nothing is mounted or run. Several models are laid out in one tree
(``layout="merge"``, refusing collisions) or one folder each (``layout="per-model"``).

Page cache (``cache``), for :func:`mount`:

* ``"keep"`` (default): the kernel keeps what it read in its page cache across opens. Re-reads and
  mmap are as fast as a local file and later opens skip this process entirely; the cost is a second
  copy of the plaintext in kernel memory (unlocked but never written anywhere: the mount has no
  backing store, so those pages are dropped, not swapped, under pressure) until unmount.
* ``"open"``: the page cache is dropped at each open; the same single-pass speed, slower re-reads.
* ``"direct"``: no page cache at all (every read is served from the locked buffer by this process);
  the slowest, and shared mmap of the files is refused by the kernel (ONNX Runtime and numpy
  memmap need it).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import RuntimeUnavailableError, UsageError
from ..lease import LeaseKeeper, LeasePolicy, keepers
from ..memlock import LockPolicy, default_notice, set_not_dumpable
from ._models import CACHE_MODES, LAYOUTS, CacheMode, Identities, Layout, PathLike, check_layout
from ._run import run
from .errors import CfsError


class Mounted:
    """A live mount: where, served by which process, which files, whether the plaintext is locked."""

    def __init__(self, mountpoint: Path, pid: int, files: Sequence[str], locked: bool) -> None:
        self.mountpoint = mountpoint
        self.pid = pid
        self.files = tuple(files)
        self.locked = locked

    def __repr__(self) -> str:
        return (
            f"Mounted(mountpoint={str(self.mountpoint)!r}, pid={self.pid}, "
            f"files={len(self.files)}, locked={self.locked})"
        )


def fuse_unavailable() -> str | None:
    """Why a FUSE mount cannot work here, or None if it can (used to pick `run` or to skip tests)."""
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError:
        return "pyfuse3/trio are not installed: pip install 'modelseal[cfs]' (needs libfuse3-dev)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian: apt-get install fuse3)"
    return None


def _as_list(identity: Identities) -> list[object]:
    return list(identity) if isinstance(identity, Sequence) else [identity]


def _mountpoint(at: PathLike) -> Path:
    path = Path(at).absolute()
    if not path.is_dir():
        raise UsageError(f"mount point {path} is not an existing folder")
    if os.path.ismount(path):
        raise UsageError(f"{path} is already a mount point")
    return path


def _require_fuse() -> None:
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        raise RuntimeUnavailableError("pyfuse3", "cfs") from None
    reason = fuse_unavailable()
    if reason is not None:
        raise CfsError(f"cannot mount: {reason}; `modelseal cfs run` works without FUSE")


def mount(
    sealed: Sequence[PathLike] | PathLike,
    identity: Identities,
    at: PathLike,
    *,
    signer: Ed25519PublicKey | None = None,
    allow_uids: Iterable[int] | None = None,
    require_mlock: bool = False,
    layout: Layout = "merge",
    cache: CacheMode = "keep",
    on_ready: Callable[[Mounted], None] | None = None,
    notice: Callable[[str], None] = default_notice,
    lease: LeasePolicy | None = None,
) -> None:
    """Serve the models at ``at`` in this process until SIGTERM/SIGINT/SIGHUP or an unmount.

    Every model is opened, authenticated and locked before anything is mounted. ``on_ready`` is
    called once the mount answers requests. Runs trio in the calling (main) thread, and makes the
    calling process non-dumpable for good (no core dumps, no same-uid ptrace or /proc/<pid>/mem).
    With ``lease``, identities that hold a lease (a vault device) are re-checked at its interval;
    a lost lease unmounts and zeroizes exactly like SIGTERM.
    """
    paths = [sealed] if isinstance(sealed, str | os.PathLike) else list(sealed)
    mountpoint = _mountpoint(at)
    uids = frozenset(allow_uids) if allow_uids is not None else frozenset({os.getuid()})
    if not uids:
        raise UsageError("allow at least one uid")
    if cache not in CACHE_MODES:
        raise UsageError(f"unknown cache mode {cache!r}: choose one of {', '.join(CACHE_MODES)}")
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    _require_fuse()
    from . import _fuse, _models

    _fuse.mount_options(uids)  # an allow_other refusal comes before decrypting gigabytes
    policy = LockPolicy(require=require_mlock, notice=notice)
    # Before anything is decrypted: no core dumps, and same-uid processes can no longer ptrace the
    # server or read its memory via /proc (before, this came after the models were opened).
    set_not_dumpable()
    opened = _models.open_models(paths, identity, signer=signer, layout=layout, lock=policy)
    watching: list[LeaseKeeper] = []
    try:
        if lease is not None:

            def lost(reason: str) -> None:
                notice(f"lease lost, unmounting {mountpoint}: {reason}")
                os.kill(os.getpid(), signal.SIGTERM)  # the same clean unmount + zeroize path

            watching = keepers(_as_list(identity), lease, lost)
        info = Mounted(mountpoint, os.getpid(), [f.path for f in opened.files], opened.locked)
        _fuse.serve(
            opened.files,
            mountpoint,
            uids,
            cache,
            (lambda: on_ready(info)) if on_ready else (lambda: None),
        )
    finally:
        for keeper in watching:
            keeper.stop()
        opened.close()


def spawn_mount(
    sealed: Sequence[PathLike] | PathLike,
    identity: Identities,
    at: PathLike,
    **options: Any,
) -> Mounted:
    """Like :func:`mount`, in a detached server process; returns once the mount is usable.

    Any error (bad key, tampered model, mount refused) is raised here, in the caller, with its own
    class and message, and nothing stays mounted. Stop the server with SIGTERM to ``.pid`` or by
    unmounting (``fusermount3 -u DIR``). The caller must not have other threads running (fork).
    """
    from ._daemon import spawn

    paths = [sealed] if isinstance(sealed, str | os.PathLike) else list(sealed)
    paths = [Path(p).absolute() for p in paths]  # the server chdirs to / once ready
    at = _mountpoint(at)
    _require_fuse()

    def server(ready: Callable[[dict[str, Any]], None]) -> None:
        def report(m: Mounted) -> None:
            ready({"mountpoint": str(m.mountpoint), "pid": m.pid, "files": list(m.files),
                   "locked": m.locked})

        mount(paths, identity, at, on_ready=report, **options)

    info = spawn(server)
    return Mounted(Path(info["mountpoint"]), int(info["pid"]), info["files"], bool(info["locked"]))


__all__ = [
    "CACHE_MODES",
    "LAYOUTS",
    "CfsError",
    "LeasePolicy",
    "LockPolicy",
    "Mounted",
    "check_layout",
    "fuse_unavailable",
    "mount",
    "run",
    "spawn_mount",
]
