"""`modelseal cfs mount`: a real FUSE mount in a subprocess, read by this process, others and nobody."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from privileges import drop_ipc_lock

from .conftest import (
    CHUNK,
    MiB,
    Mount,
    Sealed,
    cli,
    files_containing,
    fuse_skip_reason,
    mounted,
    needs_fuse,
    scan_roots,
    seal_file,
    start_mount,
)

pytestmark = needs_fuse

NOBODY = pwd.getpwnam("nobody").pw_uid


def _pread_all(path: Path, ranges: list[tuple[int, int]]) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.pread(fd, n, off) for off, n in ranges]
    finally:
        os.close(fd)


def _ranges(size: int, rng: random.Random, count: int = 200) -> list[tuple[int, int]]:
    seams = [k * CHUNK + d for k in (1, 2) for d in (-4097, -1, 0, 1, 4095) if 0 <= k * CHUNK + d < size]
    fixed = [(s, n) for s in seams for n in (1, 2, 4096, 131_072, 1 << 20)]
    fixed += [(0, size), (size - 1, 10), (size, 100), (size + 5000, 10), (0, 0)]
    rand = [(rng.randrange(size), rng.choice([1, 17, 4096, 65_536, 3 * MiB, rng.randrange(1, 2 * MiB)]))
            for _ in range(count)]
    return fixed + rand


def test_whole_file_and_random_ranges(mount: Mount, model: Sealed) -> None:
    path = mount.at / "model.bin"
    assert path.read_bytes() == model.data
    assert os.stat(path).st_size == len(model.data)
    rng = random.Random(1234)
    ranges = _ranges(len(model.data), rng)
    for (off, n), got in zip(ranges, _pread_all(path, ranges), strict=True):
        assert got == model.data[off : off + n], (off, n)


def test_listing_and_attributes(mount: Mount, model: Sealed) -> None:
    assert sorted(os.listdir(mount.at)) == ["model.bin"]
    st = os.stat(mount.at / "model.bin")
    assert st.st_uid == os.getuid()
    assert st.st_mode & 0o777 == 0o400


def test_concurrent_readers_threads_and_processes(mount: Mount, model: Sealed) -> None:
    path = mount.at / "model.bin"
    expected = hashlib.sha256(model.data).hexdigest()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        ranges = _ranges(len(model.data), rng, count=60)
        for (off, n), got in zip(ranges, _pread_all(path, ranges), strict=True):
            assert got == model.data[off : off + n], (seed, off, n)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected

    code = f"import hashlib,sys; print(hashlib.sha256(open({str(path)!r},'rb').read()).hexdigest())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(16)))
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == expected


def test_folder_model_layout(folder_model: Sealed, tmp_path: Path) -> None:
    with mounted(tmp_path / "m", [folder_model.sealed], folder_model.mek) as m:
        assert sorted(os.listdir(m.at)) == ["empty.txt", "model.xml", "tokenizer.json", "weights"]
        for name, data in folder_model.files.items():
            assert (m.at / name).read_bytes() == data, name
        assert os.listdir(m.at / "weights") == ["model.bin"]


def test_two_models_merge_and_per_model(model: Sealed, folder_model: Sealed, tmp_path: Path) -> None:
    # One MEK file can only open one of them: give both (the CLI accepts several -i).
    both = [model.sealed, folder_model.sealed]
    with mounted(tmp_path / "merge", both, model.mek, "-i", str(folder_model.mek)) as m:
        assert sorted(os.listdir(m.at)) == sorted(["model.bin", "empty.txt", "model.xml",
                                                   "tokenizer.json", "weights"])
        assert (m.at / "model.bin").read_bytes() == model.data
    extra = ("-i", str(folder_model.mek), "--layout", "per-model")
    with mounted(tmp_path / "per", both, model.mek, *extra) as m:
        assert sorted(os.listdir(m.at)) == ["ir", "model.bin"]
        assert (m.at / "model.bin" / "model.bin").read_bytes() == model.data
        assert (m.at / "ir" / "weights" / "model.bin").read_bytes() == folder_model.files["weights/model.bin"]


def test_name_collision_is_refused_before_mounting(model: Sealed, tmp_path: Path) -> None:
    other = seal_file(tmp_path / "other")  # also holds "model.bin"
    at = tmp_path / "m"
    at.mkdir()
    r = subprocess.run(cli("cfs", "mount", model.sealed, other.sealed, "--at", at, "-i", model.mek,
                           "-i", other.mek, "--foreground"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "'model.bin' is in both" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(at)


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *cmd], capture_output=True, text=True, timeout=30)


def test_other_uid_is_denied(mount: Mount) -> None:
    r = _as_nobody("cat", str(mount.at / "model.bin"))
    assert r.returncode != 0 and "Permission denied" in r.stderr and not r.stdout
    r = _as_nobody("ls", str(mount.at))
    assert r.returncode != 0 and "Permission denied" in r.stderr and "model.bin" not in r.stdout
    r = _as_nobody("stat", str(mount.at / "model.bin"))
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_other_uid_denied_with_a_forked_setuid_child(mount: Mount) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                open(mount.at / "model.bin", "rb").close()
            except PermissionError:
                try:
                    os.listdir(mount.at)
                except PermissionError:
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_allowed_uid_can_read(model: Sealed) -> None:
    # pytest's tmp dirs are 0700 root: nobody needs a folder it can traverse to reach the mount.
    base = Path(tempfile.mkdtemp(prefix="modelseal-cfs-test-"))
    try:
        base.chmod(0o755)
        with mounted(base / "m", [model.sealed], model.mek, "--allow-uid", "0", "--allow-uid", "nobody") as m:
            r = _as_nobody("sha256sum", str(m.at / "model.bin"))
            assert r.returncode == 0, r.stderr
            assert r.stdout.split()[0] == hashlib.sha256(model.data).hexdigest()
            assert (m.at / "model.bin").read_bytes() == model.data  # root is still allowed
            r = _as_nobody("ls", str(m.at))
            assert r.stdout.split() == ["model.bin"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_writes_and_creates_are_refused(mount: Mount) -> None:
    path = mount.at / "model.bin"
    refused = (errno.EROFS, errno.EACCES, errno.EPERM)
    attempts: list[Callable[[], object]] = [
        lambda: os.open(path, os.O_WRONLY),
        lambda: os.open(path, os.O_RDWR),
        lambda: os.open(path, os.O_RDONLY | os.O_TRUNC),
        lambda: os.open(mount.at / "new", os.O_WRONLY | os.O_CREAT, 0o600),
        lambda: os.mkdir(mount.at / "d"),
        lambda: os.unlink(path),
        lambda: os.rename(path, mount.at / "x"),
        lambda: os.chmod(path, 0o644),
        lambda: os.truncate(path, 0),
        lambda: os.symlink("model.bin", mount.at / "link"),
        lambda: os.link(path, mount.at / "hard"),
        lambda: os.mkfifo(mount.at / "fifo"),
        lambda: os.setxattr(path, "user.x", b"1"),
        lambda: os.utime(path, None),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno in refused, (attempt, e.value)
    with pytest.raises(OSError) as e:
        os.getxattr(path, "user.x")
    assert e.value.errno in (errno.ENOTSUP, errno.ENODATA)
    assert path.stat().st_size > 0


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
@pytest.mark.parametrize("what", ["tampered", "wrong key"])
def test_bad_model_fails_before_anything_is_mounted(
    model: Sealed, tmp_path: Path, what: str, daemon: bool
) -> None:
    sealed, mek = model.sealed, model.mek
    if what == "tampered":
        sealed = tmp_path / "tampered.mseal"
        data = bytearray(model.sealed.read_bytes())
        data[-5000] ^= 1
        sealed.write_bytes(data)
    else:
        mek = tmp_path / "other.key"
        mek.write_bytes(os.urandom(32))
    at = tmp_path / "m"
    at.mkdir()
    args: list[str | Path] = ["cfs", "mount", sealed, "--at", at, "-i", mek]
    args += [] if daemon else ["--foreground"]
    r = subprocess.run(cli(*args), capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    if what == "tampered":
        assert r.returncode == 4 and "integrity check failed" in r.stderr
    else:
        assert r.returncode == 5, r.stderr
    assert len(lines) == 1 and lines[0].startswith("modelseal: error:"), r.stderr
    assert not os.path.ismount(at)


def test_sigterm_and_sigint_unmount_cleanly(model: Sealed, tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        m = start_mount(tmp_path / f"m{sig}", [model.sealed], model.mek)
        try:
            fd = os.open(m.at / "model.bin", os.O_RDONLY)
            assert os.pread(fd, 100, 0) == model.data[:100]
            os.close(fd)
            m.proc.send_signal(sig)
            assert m.proc.wait(20) == 0, m.stderr()
            assert not os.path.ismount(m.at)
            assert "unmounted" in m.stderr()
        finally:
            m.stop()


def test_external_unmount_stops_the_server(model: Sealed, tmp_path: Path) -> None:
    m = start_mount(tmp_path / "m", [model.sealed], model.mek)
    try:
        subprocess.run(["fusermount3", "-u", str(m.at)], check=True)
        assert m.proc.wait(20) == 0
        assert not os.path.ismount(m.at)
    finally:
        m.stop()


def test_daemon_returns_once_usable_and_stops_on_sigterm(model: Sealed, tmp_path: Path) -> None:
    at = tmp_path / "m"
    at.mkdir()
    started = time.monotonic()
    r = subprocess.run(cli("cfs", "mount", model.sealed, "--at", at, "-i", model.mek),
                       capture_output=True, text=True, timeout=60)
    pid = 0
    try:
        assert r.returncode == 0, r.stderr
        found = re.search(r"server pid (\d+)", r.stderr)
        assert found, r.stderr
        pid = int(found.group(1))
        # Usable as soon as the command returned: no polling.
        assert (at / "model.bin").read_bytes() == model.data
        assert time.monotonic() - started < 60
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while os.path.ismount(at) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.ismount(at)
    finally:
        if os.path.ismount(at):
            subprocess.run(["umount", "-l", str(at)], check=False)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_no_plaintext_in_any_file_after_mount_and_read(model: Sealed, folder_model: Sealed,
                                                       tmp_path: Path) -> None:
    with mounted(tmp_path / "m", [folder_model.sealed], folder_model.mek) as m:
        for name, data in folder_model.files.items():
            assert (m.at / name).read_bytes() == data
        hits = files_containing(folder_model.needle, scan_roots(tmp_path), [folder_model.plain])
    assert hits == []


def test_mlock_refusal_is_reported_and_can_be_fatal(tmp_path: Path) -> None:
    big = seal_file(tmp_path / "big", size=12 * MiB)  # above the 8 MiB RLIMIT_MEMLOCK
    at = tmp_path / "m"
    at.mkdir()
    r = subprocess.run(cli("cfs", "mount", big.sealed, "--at", at, "-i", big.mek, "--require-mlock"),
                       capture_output=True, text=True, timeout=60, preexec_fn=drop_ipc_lock)
    if "RLIMIT_MEMLOCK" not in r.stderr and r.returncode == 0:  # pragma: no cover - unlimited here
        subprocess.run(["fusermount3", "-u", str(at)], check=False)
        pytest.skip("RLIMIT_MEMLOCK is unlimited here")
    assert r.returncode == 10 and "RLIMIT_MEMLOCK" in r.stderr, r.stderr
    assert not os.path.ismount(at)
    proc = subprocess.Popen(cli("cfs", "mount", big.sealed, "--at", at, "-i", big.mek, "--foreground"),
                            stderr=subprocess.PIPE, text=True, preexec_fn=drop_ipc_lock)
    m = Mount(at, proc)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(at) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (at / "model.bin").read_bytes() == big.data
    finally:
        m.stop()
    err = m.stderr()
    assert "mlock) refused" in err and "may be swapped" in err and "memory NOT locked" in err


def test_reason_when_fuse_is_missing() -> None:
    assert fuse_skip_reason() is None  # this module only runs where FUSE works



@pytest.mark.parametrize("cache", ["open", "direct"])
def test_other_cache_modes_serve_the_same_bytes(model: Sealed, tmp_path: Path, cache: str) -> None:
    with mounted(tmp_path / "m", [model.sealed], model.mek, "--cache", cache) as m:
        path = m.at / "model.bin"
        assert path.read_bytes() == model.data
        ranges = _ranges(len(model.data), random.Random(7), count=50)
        for (off, n), got in zip(ranges, _pread_all(path, ranges), strict=True):
            assert got == model.data[off : off + n], (off, n)
