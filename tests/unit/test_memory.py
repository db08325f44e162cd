"""The plaintext lives in one private anonymous mapping, kept out of core dumps and children."""

from __future__ import annotations

import ctypes
import mmap
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from privileges import drop_ipc_lock

import modelseal
from modelseal import memlock
from modelseal.memory import PlainBuffer


def _smaps_entry(address: int) -> tuple[str, list[str]]:
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                for follow in lines[i + 1 :]:
                    if follow.startswith("VmFlags:"):
                        return line, follow.split()[1:]
    raise AssertionError("mapping not found")


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_buffer_is_private_anonymous_no_dump_no_fork() -> None:
    buf = PlainBuffer(8 << 20)
    try:
        header, flags = _smaps_entry(_address(buf.view))
        assert len(header.split()) == 5, f"mapping is backed by a file: {header}"  # no path column
        assert "dd" in flags and "dc" in flags, flags  # MADV_DONTDUMP, MADV_DONTFORK
        assert "sh" not in flags  # MAP_PRIVATE, not shared memory
    finally:
        buf.close()


def test_zeroize_and_close_with_an_outstanding_export() -> None:
    buf = PlainBuffer(1 << 20)
    buf.view[:5] = b"hello"
    outside = memoryview(buf._map)  # a holder the buffer does not know about
    window = buf.export(0, 5)
    buf.close()
    assert buf.closed
    assert bytes(outside[:5]) == bytes(5)  # zeroized even though it could not be unmapped yet
    try:
        bytes(window)
        raise AssertionError("exported window still readable after close")
    except ValueError:
        pass
    outside.release()


def test_open_places_all_files_in_one_mapping(
    tmp_path: Path, model_folder: tuple[Path, dict[str, bytes]], mek: bytes
) -> None:
    src, _ = model_folder
    modelseal.seal(src, tmp_path / "f.mseal", mek=mek)
    with modelseal.open(tmp_path / "f.mseal", modelseal.MEK(mek)) as m:
        owners = {id(m.read(n).obj) for n in m.names()}
        assert len(owners) == 1
        base = m.read(m.names()[0]).obj
        assert isinstance(base, mmap.mmap)
        header, _ = _smaps_entry(_address(memoryview(base)))
        assert len(header.split()) == 5  # anonymous


def _locked_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError("no VmLck")


def test_open_can_lock_the_plaintext(tmp_path: Path, mek: bytes) -> None:
    limit = memlock.memlock_limit()
    if limit is not None and limit < 32 << 20:
        pytest.skip("RLIMIT_MEMLOCK too small here to lock 16 MiB")
    (tmp_path / "m.bin").write_bytes(os.urandom(16 << 20))
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek)
    before = _locked_kib()
    with modelseal.open(tmp_path / "m.mseal", modelseal.MEK(mek), mlock="require") as m:
        assert m.locked and _locked_kib() - before >= 16 << 10
        assert bytes(m.read()) == (tmp_path / "m.bin").read_bytes()
    assert _locked_kib() == before
    with modelseal.open(tmp_path / "m.mseal", modelseal.MEK(mek)) as m:
        assert not m.locked


CHILD = """
import sys, warnings, modelseal
mode = sys.argv[3] if sys.argv[3] == "require" else True
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        m = modelseal.open(sys.argv[1], modelseal.load_identity(sys.argv[2]), mlock=mode)
    except modelseal.MemoryLockError as e:
        print("error:", e)
        sys.exit(10)
print("locked" if m.locked else "unlocked", *[str(w.message) for w in caught])
"""


def test_mlock_refusal_warns_or_raises_before_decrypting(tmp_path: Path, mek: bytes) -> None:
    (tmp_path / "m.bin").write_bytes(os.urandom(12 << 20))  # above the 8 MiB RLIMIT_MEMLOCK
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek)
    modelseal.write_mek(mek, tmp_path / "MEK.dat")
    args = [sys.executable, "-c", CHILD, str(tmp_path / "m.mseal"), str(tmp_path / "MEK.dat")]
    if resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_MEMLOCK is unlimited here")
    soft = subprocess.run([*args, "warn"], capture_output=True, text=True, preexec_fn=drop_ipc_lock)
    assert soft.returncode == 0 and soft.stdout.startswith("unlocked") and "RLIMIT_MEMLOCK" in soft.stdout
    hard = subprocess.run([*args, "require"], capture_output=True, text=True, preexec_fn=drop_ipc_lock)
    assert hard.returncode == 10 and "RLIMIT_MEMLOCK" in hard.stdout, hard.stdout + hard.stderr
