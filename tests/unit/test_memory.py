"""The plaintext lives in one private anonymous mapping, kept out of core dumps and children."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import modelseal
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
