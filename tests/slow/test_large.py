"""Long variants: models past the 2 GiB limit of a single AESGCM call. Run with `pytest -m slow`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import modelseal

pytestmark = pytest.mark.slow

SIZE = (2 << 30) + (3 << 20) + 17  # past 2**31 - 1, not a multiple of the chunk size


def _write_pattern(path: Path, size: int) -> str:
    block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB of non-zero bytes
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def test_model_larger_than_2_gib_round_trips_and_rewraps_in_place(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    expected = _write_pattern(src, SIZE)
    key = modelseal.keygen()
    sealed = tmp_path / "big.mseal"
    modelseal.seal(src, sealed, mek=key)
    src.unlink()
    with modelseal.open(sealed, modelseal.MEK(key)) as m:
        view = m.read()
        assert len(view) == SIZE
        assert hashlib.sha256(view).hexdigest() == expected
        del view
    before = Path("/proc/self/io").read_text()
    ident = modelseal.generate_identity()
    result = modelseal.rewrap(sealed, modelseal.MEK(key), add=[ident.recipient], in_place=True)
    after = Path("/proc/self/io").read_text()

    def wchar(text: str) -> int:
        return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("wchar:"))

    assert wchar(after) - wchar(before) <= 2 * result.header_length + 128  # header + its journal
    report = modelseal.verify(sealed, ident)
    assert report.payload_authenticated and report.payload_length == SIZE
