"""Crypto-fs sequential read throughput vs gocryptfs serving the same ~1 GiB model, same run.

Three contenders, read by the same reader (unbuffered readinto of 1 MiB into one buffer):
  plain     the plaintext file on the local disk, in the page cache (the ceiling)
  cfs       `modelseal cfs mount` (default options: keep_cache, readahead raised as root)
  gocryptfs the same model copied into a gocryptfs folder (`gocryptfs -init`, mounted)

Two measurements per mount:
  cold  first read after `echo 3 > /proc/sys/vm/drop_caches` (root only): the FUSE page cache is
        empty, so every byte goes through the filesystem process. gocryptfs's ciphertext file is
        read back into the page cache right after the drop, so no contender touches the disk:
        this measures decryption + FUSE, not the disk.
  warm  the same file read again in a new open() (what a second load of the model costs).
CFS decrypts everything at mount time; that time is reported separately (mount->usable), as is
gocryptfs's mount time, so the comparison stays honest about where the work happens.

Run as root: python bench/bench_cfs.py [--size-mib 1024] [--reps 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _benchutil import (
    MiB,
    Timing,
    add_output_options,
    machine,
    measure,
    print_table,
    skip,
    timing_dict,
    touch_memory,
    wait_for_idle,
    warm,
    write_random_file,
    write_results,
)

import modelseal
from modelseal.cfs import fuse_unavailable

READ_BUF = 1 * MiB


def read_all(path: Path) -> int:
    buf = bytearray(READ_BUF)
    total = 0
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def drop_caches() -> bool:
    if os.geteuid() != 0:
        return False
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return True


def timed_cold(name: str, path: Path, size: int, reps: int, after_drop: Callable[[], None]) -> Timing:
    runs = []
    for _ in range(reps):
        wait_for_idle()
        drop_caches()
        after_drop()
        t0 = time.perf_counter()
        got = read_all(path)
        runs.append(time.perf_counter() - t0)
        assert got == size, (got, size)
    return Timing(name, runs, size)


def timed_warm(name: str, path: Path, size: int, reps: int) -> Timing:
    read_all(path)  # fill whatever cache the filesystem keeps

    def run() -> None:
        assert read_all(path) == size

    return measure(name, size, reps, lambda: run())


@contextlib.contextmanager
def cfs_mount(sealed: Path, mek: Path, at: Path) -> Iterator[float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "modelseal", "cfs", "mount", str(sealed), "--at", str(at), "-i", str(mek)],
        capture_output=True, text=True, check=False,
    )
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"cfs mount failed: {r.stderr}")
    found = re.search(r"server pid (\d+)", r.stderr)
    assert found, r.stderr
    pid = int(found.group(1))
    try:
        yield elapsed
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while os.path.ismount(at) and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.path.ismount(at):
            subprocess.run(["umount", "-l", str(at)], check=False)


@contextlib.contextmanager
def gocryptfs_mount(cipher: Path, passfile: Path, at: Path) -> Iterator[float]:
    t0 = time.perf_counter()
    args = ["gocryptfs", "-q", "-nosyslog", "-passfile", str(passfile), str(cipher), str(at)]
    subprocess.run(args, check=True)
    elapsed = time.perf_counter() - t0
    try:
        yield elapsed
    finally:
        subprocess.run(["fusermount3", "-u", str(at)], check=False)
        if os.path.ismount(at):
            subprocess.run(["umount", "-l", str(at)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh folder in $TMPDIR")
    add_output_options(ap)
    args = ap.parse_args()
    started = time.time()
    reason = fuse_unavailable()
    if reason:
        skip(args, "cfs", f"FUSE unavailable: {reason}")
    if shutil.which("gocryptfs") is None:
        skip(args, "cfs", "gocryptfs is not installed (Debian: apt-get install gocryptfs)")
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="bench-cfs-", dir=args.workdir))
    try:
        write_results(args, "cfs", run(work, size, args.reps), started)
    finally:
        for mnt in (work / "cfs-mnt", work / "gocryptfs-mnt"):
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, size: int, reps: int) -> dict[str, Any]:
    print(f"# bench_cfs: {size / MiB:.0f} MiB model, {reps} runs each, reader: readinto 1 MiB")
    print(f"# {machine()}; gocryptfs: "
          + subprocess.run(["gocryptfs", "-version"], capture_output=True, text=True).stdout.split(";")[0])
    plain = work / "model.bin"
    write_random_file(plain, size)
    mek = work / "MEK.dat"
    modelseal.write_mek(modelseal.keygen(), mek)
    sealed = work / "model.mseal"
    modelseal.seal(plain, sealed, mek=modelseal.load_mek(mek))

    cipher, gmnt, cmnt = work / "gocryptfs-cipher", work / "gocryptfs-mnt", work / "cfs-mnt"
    for d in (cipher, gmnt, cmnt):
        d.mkdir()
    passfile = work / "pass.txt"
    passfile.write_text("bench passphrase\n")
    subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(passfile), str(cipher)], check=True)
    with gocryptfs_mount(cipher, passfile, gmnt):
        shutil.copyfile(plain, gmnt / "model.bin")
        os.sync()
    cipher_files = [p for p in cipher.iterdir() if p.stat().st_size >= size]
    assert len(cipher_files) == 1, cipher_files

    def warm_plain() -> None:
        warm(plain)

    def warm_cipher() -> None:
        warm(cipher_files[0])

    can_drop = os.geteuid() == 0
    rows_cold: list[Timing] = []
    rows_warm: list[Timing] = []
    warm(plain)
    rows_warm.append(timed_warm("plain file (page cache)", plain, size, reps))
    if can_drop:
        rows_cold.append(timed_cold("plain file (page cache)", plain, size, reps, warm_plain))

    wait_for_idle()
    # As in bench_open: on these VMs (virtio-balloon) the first touch of memory idle for a while
    # costs host faults (up to ~1.5 s/GiB); start the mount from host-backed memory.
    touch_memory(size)
    with cfs_mount(sealed, mek, cmnt) as cfs_mount_s:
        path = cmnt / "model.bin"
        if can_drop:
            rows_cold.append(timed_cold("cfs (modelseal cfs mount)", path, size, reps, lambda: None))
        rows_warm.append(timed_warm("cfs (modelseal cfs mount)", path, size, reps))

    wait_for_idle()
    with gocryptfs_mount(cipher, passfile, gmnt) as g_mount_s:
        path = gmnt / "model.bin"
        if can_drop:
            rows_cold.append(timed_cold("gocryptfs", path, size, reps, warm_cipher))
        rows_warm.append(timed_warm("gocryptfs", path, size, reps))

    base = "x base = plain time / time (>1 = faster than a plain page-cached file)"
    if rows_cold:
        print_table("cold: first read after drop_caches (FUSE cache empty, no disk I/O)", rows_cold,
                    rows_cold[0], base)
    print_table("warm: second read, new open()", rows_warm, rows_warm[0], base)
    print(f"\nmount -> usable: cfs {cfs_mount_s:.2f} s (authenticates + decrypts all {size / MiB:.0f} MiB "
          f"up front, incl. CLI start), gocryptfs {g_mount_s:.2f} s (decrypts on read)")
    print("\n## ratios (cfs / gocryptfs throughput; target >= 1.0)")
    for label, rows in (("cold", rows_cold), ("warm", rows_warm)):
        if not rows:
            continue
        c, g = rows[1], rows[2]
        print(f"{label}: best {g.best / c.best:.2f}x   median {g.median / c.median:.2f}x   "
              f"(cfs {c.rate(c.best):.2f} GB/s, gocryptfs {g.rate(g.best):.2f} GB/s best)")
    if rows_cold:
        c, g = rows_cold[1], rows_cold[2]
        first_cfs = cfs_mount_s + c.median
        first_g = g_mount_s + g.median
        print(f"mount + first cold read: cfs {first_cfs:.2f} s, gocryptfs {first_g:.2f} s "
              f"({first_g / first_cfs:.2f}x)")
    # Rows: plain file, cfs, gocryptfs (cold only as root: it needs drop_caches).
    return {
        "size_bytes": size,
        "cold": [timing_dict(t) for t in rows_cold],
        "warm": [timing_dict(t) for t in rows_warm],
        "mount_seconds": {"cfs": cfs_mount_s, "gocryptfs": g_mount_s},
    }


if __name__ == "__main__":
    main()
