"""`cfs run`: where FUSE is missing, hand a child process its model files as sealed memfds.

Each file is copied once into a sealed memfd (see modelseal.memfd), then the private plaintext is
zeroized; only the memfds remain, pinned in RAM by an mlocked read-only mapping where permitted.
The child inherits exactly those fds (``pass_fds`` clears close-on-exec in the child only) and
finds them by name through a private folder of symlinks (0700, on tmpfs, removed at exit)::

    MODELSEAL_DIR=/dev/shm/modelseal-run-XXXX     same layout as the mount
        model.onnx -> /proc/<runner pid>/fd/5
    MODELSEAL_FILES={"model.onnx": "/dev/shm/modelseal-run-XXXX/model.onnx"}
    MODELSEAL_FILE=/dev/shm/modelseal-run-XXXX/model.onnx   (only when there is exactly one file)

The links point into the runner's /proc entry, not /proc/self, so they keep working in
grandchildren that did not inherit the fds (e.g. a wrapper that spawns with close_fds); this
needs the runner to stay ptrace-readable by its own uid, so it is not made non-dumpable. It writes
no core file instead (RLIMIT_CORE 0, set before anything is decrypted; the command inherits it: its
memory holds the plaintext too), and the command is killed if the runner dies (PR_SET_PDEATHSIG),
so a crashed runner never leaves it running without lease checks. A runner killed outright leaves
its folder of links (names, no plaintext); the next run removes those of runners that are gone.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import memfd
from ..errors import LeaseLostError, UsageError
from ..lease import LeasePolicy, keepers
from ..memlock import LockPolicy, die_with_parent, no_core_files
from ._models import Identities, Layout, PathLike, open_models
from .errors import CfsError

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _PinnedMemfd:
    """A read-only shared mapping of a sealed memfd: mlocking it pins the memfd's own pages."""

    def __init__(self, fd: int, size: int) -> None:
        self.map: mmap.mmap | None = None
        if size:
            self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            for advice in ("MADV_DONTDUMP", "MADV_DONTFORK"):
                with contextlib.suppress(AttributeError, OSError):
                    self.map.madvise(getattr(mmap, advice))

    def view(self) -> memoryview:
        return memoryview(self.map) if self.map is not None else memoryview(b"")

    def close(self) -> None:
        if self.map is not None:
            with contextlib.suppress(BufferError):
                self.map.close()
            self.map = None


_LINK_PREFIX = "modelseal-run-"


def _link_dir() -> Path:
    """A private (0700) folder on tmpfs: it only ever holds symlinks, but keep even names off disk."""
    # mkdtemp makes a fresh 0700 folder with a random name, so a shared /dev/shm is fine here.
    prefix = f"{_LINK_PREFIX}{os.getpid()}-"
    for base in ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR", "")):  # noqa: S108
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            _sweep_link_dirs(Path(base))
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    _sweep_link_dirs(Path(tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix=prefix))


def _sweep_link_dirs(base: Path) -> None:
    """Remove the link folders of this uid's runners that are gone (killed before their cleanup)."""
    for folder in base.glob(f"{_LINK_PREFIX}*-*"):
        pid = folder.name[len(_LINK_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)  # alive (or not ours to signal): keep
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def _child_setup(parent: int) -> Callable[[], None]:
    def setup() -> None:
        die_with_parent()
        if os.getppid() != parent:  # the runner died before the line above took effect
            os._exit(1)

    return setup


def _terminal_already_sent(sig: int) -> bool:
    """Ctrl-C from the terminal reaches the whole foreground group, the child included."""
    if sig != signal.SIGINT:
        return False
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def run(
    sealed: Sequence[PathLike],
    identity: Identities,
    argv: Sequence[str],
    *,
    signer: Ed25519PublicKey | None = None,
    layout: Layout = "merge",
    require_mlock: bool = False,
    lock: LockPolicy | None = None,
    env: Mapping[str, str] | None = None,
    lease: LeasePolicy | None = None,
) -> int:
    """Run ``argv`` with the models' files as sealed memfds; return its exit code (128+N if killed by N).

    Every model is authenticated completely before the child starts: a failing model raises
    and no process is started. SIGTERM, SIGINT and SIGHUP are forwarded to the child. With
    ``lease``, a lost lease (device revoked, licence ended) stops the child with SIGTERM, closes
    the memfds and raises LeaseLostError.
    """
    if not argv:
        raise UsageError("give the command to run after --")
    no_core_files()  # before anything is decrypted: a crash must not write keys or plaintext to disk
    policy = lock or LockPolicy(require=require_mlock)
    opened = open_models(
        sealed, identity, signer=signer, layout=layout, lock=policy, lock_views=False, copies=2
    )
    fds: list[int] = []
    pins: list[_PinnedMemfd] = []
    links: Path | None = None
    try:
        try:
            for i, f in enumerate(opened.files):
                # A generic name: the memfd's name shows in /proc and file names are confidential.
                fds.append(memfd.create_sealed(f"modelseal-{i}", f.view))
                pins.append(_PinnedMemfd(fds[-1], len(f.view)))
        finally:
            opened.close()  # the memfds now hold the only plaintext
        policy.lock([p.view() for p in pins])
        links = _link_dir()
        files: dict[str, str] = {}
        for f, fd in zip(opened.files, fds, strict=True):
            link = links / f.path
            link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            link.symlink_to(f"/proc/{os.getpid()}/fd/{fd}")
            files[f.path] = str(link)
        child_env = dict(os.environ if env is None else env)
        child_env["MODELSEAL_DIR"] = str(links)
        child_env["MODELSEAL_FILES"] = json.dumps(files)
        child_env.pop("MODELSEAL_FILE", None)
        if len(files) == 1:
            child_env["MODELSEAL_FILE"] = next(iter(files.values()))
        lost: list[str] = []

        def on_lost(reason: str) -> None:
            lost.append(reason)
            os.kill(os.getpid(), signal.SIGTERM)  # forwarded to the child by _spawn_and_wait

        identities = list(identity) if isinstance(identity, Sequence) else [identity]
        watching = keepers(identities, lease, on_lost) if lease is not None else []
        try:
            code = _spawn_and_wait(argv, fds, child_env)
        finally:
            for keeper in watching:
                keeper.stop()
        if lost:
            raise LeaseLostError(f"the command was stopped because the model's lease ended: {lost[0]}")
        return code
    finally:
        if links is not None:
            shutil.rmtree(links, ignore_errors=True)
        for p in pins:
            p.close()
        for fd in fds:
            os.close(fd)


def _spawn_and_wait(argv: Sequence[str], fds: Sequence[int], env: Mapping[str, str]) -> int:
    child: subprocess.Popen[bytes] | None = None

    def forward(sig: int, frame: FrameType | None) -> None:
        if child is not None and child.returncode is None and not _terminal_already_sent(sig):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            # preexec_fn runs one prctl (a C call, no lock taken) between fork and exec.
            child = subprocess.Popen(
                list(argv), pass_fds=list(fds), env=dict(env), preexec_fn=_child_setup(os.getpid())
            )
        except OSError as e:
            raise CfsError(f"cannot run {argv[0]}: {e.strerror}") from None
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
