"""Pieces of the Crypto-fs that need neither FUSE nor a child process."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

import pytest

import modelseal
from modelseal import memfd
from modelseal import memlock as _lock
from modelseal.cfs import LockPolicy, check_layout


def test_sealed_memfd_holds_the_bytes_and_refuses_every_change() -> None:
    data = os.urandom(3 * 4096 + 5)
    fd = memfd.create_sealed("t", data)
    try:
        assert memfd.is_sealed(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.pread(fd, len(data) + 10, 0) == data
        for attempt in (
            lambda: os.pwrite(fd, b"x", 0),
            lambda: os.ftruncate(fd, len(data) + 1),
            lambda: os.ftruncate(fd, 1),
            lambda: mmap.mmap(fd, len(data), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE),
            lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE),
        ):
            with pytest.raises(PermissionError):
                attempt()
        # Read-only and private (copy-on-write) mappings stay allowed: numpy/torch mmap modes.
        with mmap.mmap(fd, len(data), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            assert m[:] == data
        with mmap.mmap(fd, len(data), flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[0:1] = b"z"
        assert os.pread(fd, 1, 0) == data[:1]
    finally:
        os.close(fd)


def test_empty_memfd() -> None:
    fd = memfd.create_sealed("empty", b"")
    try:
        assert memfd.is_sealed(fd) and os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


def test_layout_collisions() -> None:
    a, b = Path("a.mseal"), Path("b.mseal")
    check_layout([("x/model.bin", a), ("model.bin", b), ("x/y", a)])
    with pytest.raises(modelseal.UsageError, match="in both"):
        check_layout([("model.bin", a), ("model.bin", b)])
    with pytest.raises(modelseal.UsageError, match=r"a file in .* and a folder"):
        check_layout([("weights", a), ("weights/model.bin", b)])


def test_lock_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    notices: list[str] = []
    monkeypatch.setattr(_lock, "memlock_limit", lambda: 8 << 20)
    assert LockPolicy(notice=notices.append).precheck(4 << 20)
    assert not LockPolicy(notice=notices.append).precheck(1 << 30)
    assert "RLIMIT_MEMLOCK is 8 MiB" in notices[0] and "1.0 GiB" in notices[0]
    assert "--require-mlock" in notices[0]
    with pytest.raises(modelseal.MemoryLockError, match="mlock"):
        LockPolicy(require=True).precheck(1 << 30)

    def refuse(view: memoryview) -> None:
        raise OSError(errno.ENOMEM, "no")

    monkeypatch.setattr(_lock, "mlock", refuse)
    policy = LockPolicy(notice=notices.append)
    assert not policy.lock([memoryview(b"abc")]) and not policy.locked


def test_mlock_a_read_only_view() -> None:
    buf = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(buf).toreadonly()
    try:
        assert _lock.address(view) == _lock.address(memoryview(buf))
        if _lock.memlock_limit() is None:
            policy = LockPolicy()
            assert policy.lock([view[4096:8192]]) and policy.locked
            _lock.munlock(view[4096:8192])
    finally:
        view.release()
        buf.close()


def test_public_surface() -> None:
    from modelseal import cfs

    assert set(cfs.__all__) == {
        "CACHE_MODES", "LAYOUTS", "CfsError", "LeasePolicy", "LockPolicy", "Mounted", "check_layout",
        "fuse_unavailable", "mount", "run", "spawn_mount",
    }
    assert issubclass(cfs.CfsError, modelseal.ModelSealError)
