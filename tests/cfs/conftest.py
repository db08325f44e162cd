"""Fixtures for the Crypto-fs tests: real sealed models, mounts in subprocesses, plaintext scans.

Every mount lives under a pytest tmp dir and is torn down (SIGTERM, then a lazy umount and a kill)
whatever the test did. Where FUSE cannot work the FUSE tests skip with the reason, except under
CI=true, where any skip is a failure (tests/ci_no_skip.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from leaks import contains

import modelseal
from modelseal.cfs import fuse_unavailable

MiB = 1 << 20
CHUNK = 4 * MiB
# Spans two 4 MiB payload chunks and ends mid-chunk, so reads cross a chunk seam.
MODEL_SIZE = 6 * MiB + 12_345
SESSION_START = time.time()


def fuse_skip_reason() -> str | None:
    reason = fuse_unavailable()
    if reason is None and os.geteuid() != 0:
        # Measured on our machines: unprivileged FUSE mounts fail (no setuid fusermount3 use).
        reason = "FUSE mounts work only as root on these machines"
    return reason


needs_fuse = pytest.mark.skipif(fuse_skip_reason() is not None, reason=str(fuse_skip_reason()))


def cli(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "modelseal", *map(str, args)]


@dataclass
class Sealed:
    plain: Path  # the plaintext original this test wrote (file or folder)
    sealed: Path
    mek: Path
    files: dict[str, bytes]  # name in the sealed model -> plaintext

    @property
    def data(self) -> bytes:
        assert len(self.files) == 1
        return next(iter(self.files.values()))

    @property
    def needle(self) -> bytes:
        """A distinctive 64-byte slice of the plaintext, to look for where it must not be."""
        biggest = max(self.files.values(), key=len)
        return biggest[len(biggest) // 2 : len(biggest) // 2 + 64]


def seal_file(folder: Path, name: str = "model.bin", size: int = MODEL_SIZE) -> Sealed:
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / name
    data = os.urandom(size)
    plain.write_bytes(data)
    mek = folder / "MEK.dat"
    modelseal.write_mek(modelseal.keygen(), mek)
    sealed = folder / (name + ".mseal")
    modelseal.seal(plain, sealed, mek=modelseal.load_mek(mek))
    return Sealed(plain, sealed, mek, {name: data})


def seal_folder(folder: Path) -> Sealed:
    root = folder / "ir"
    files = {
        "model.xml": b"<net>" + os.urandom(3000).hex().encode() + b"</net>",
        "weights/model.bin": os.urandom(5 * MiB + 7),
        "tokenizer.json": b'{"vocab": [1, 2, 3]}',
        "empty.txt": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    mek = folder / "MEK.dat"
    modelseal.write_mek(modelseal.keygen(), mek)
    sealed = folder / "ir.mseal"
    modelseal.seal(root, sealed, mek=modelseal.load_mek(mek))
    return Sealed(root, sealed, mek, files)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Sealed:
    return seal_file(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory: pytest.TempPathFactory) -> Sealed:
    return seal_folder(tmp_path_factory.mktemp("folder"))


class Mount:
    """`modelseal cfs mount ... --foreground` in a subprocess, mounted under a tmp dir."""

    def __init__(self, at: Path, proc: subprocess.Popen[str]) -> None:
        self.at = at
        self.proc = proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.ismount(self.at):
            subprocess.run(["umount", "-l", str(self.at)], check=False)
        return self.proc.returncode

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def start_mount(
    at: Path, sealed: Sequence[Path], mek: Path, *extra: str, timeout: float = 60
) -> Mount:
    at.mkdir(parents=True, exist_ok=True)
    args = cli("cfs", "mount", *sealed, "--at", at, "-i", mek, "--foreground", *extra)
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    m = Mount(at, proc)
    deadline = time.monotonic() + timeout
    while not os.path.ismount(at):
        if proc.poll() is not None:
            raise AssertionError(f"mount exited {proc.returncode}: {m.stderr()}")
        if time.monotonic() > deadline:
            m.stop()
            raise AssertionError("mount did not come up in time")
        time.sleep(0.05)
    return m


@contextlib.contextmanager
def mounted(at: Path, sealed: Sequence[Path], mek: Path, *extra: str) -> Iterator[Mount]:
    m = start_mount(at, sealed, mek, *extra)
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def mount(model: Sealed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    reason = fuse_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with mounted(tmp_path_factory.mktemp("mnt") / "m", [model.sealed], model.mek) as m:
        yield m


# --- plaintext scan ------------------------------------------------------------------------------


def scan_roots(*extra: Path) -> list[Path]:
    roots = [Path(tempfile.gettempdir()), Path("/dev/shm"), Path.cwd(), *extra]
    return [r for r in roots if r.is_dir()]


def files_containing(needle: bytes, roots: Sequence[Path], exclude: Sequence[Path]) -> list[Path]:
    """Regular files under ``roots`` (not crossing into other mounts) that contain ``needle``.

    Only files changed since this test session began are read: a leak would be written by the
    code under test, so it is new; this keeps the scan fast next to other people's big files.
    """
    skip = {p.resolve() for p in exclude}
    hits: list[Path] = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
            for name in filenames:
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or max(st.st_mtime, st.st_ctime) < SESSION_START - 2:
                    continue
                if path.resolve() in skip or any(path.resolve().is_relative_to(s) for s in skip):
                    continue
                if contains(path, needle):
                    hits.append(path)
    return hits


