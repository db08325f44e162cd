"""An in-place rewrap killed half-way is finished by the next command that opens the file: the
journal it left holds the whole new header, and no key or manual copy is needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import modelseal
from modelseal.header_rewrite import journal_path

# Rewraps in place, but dies (SIGKILL) after writing half of the new header over the old one.
TORN = textwrap.dedent(
    """
    import os, signal, sys
    import modelseal
    from modelseal import header_rewrite
    def torn(target, fd, region):
        os.pwrite(fd, region[: len(region) // 2], 0)
        os.kill(os.getpid(), signal.SIGKILL)
    header_rewrite._write_header = torn
    recipient = modelseal.load_recipient(sys.argv[3])
    modelseal.rewrap(sys.argv[1], modelseal.load_mek(sys.argv[2]), add=[recipient], in_place=True)
    """
)


@pytest.fixture
def sealed(tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes) -> tuple[Path, Path, bytes]:
    src, data = model_file
    modelseal.write_mek(mek, tmp_path / "MEK.dat")
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek, signer=modelseal.generate_signer())
    return tmp_path / "m.mseal", tmp_path / "MEK.dat", data


def torn_rewrap(path: Path, mek_file: Path, recipient: str) -> None:
    result = subprocess.run([sys.executable, "-c", TORN, str(path), str(mek_file), recipient])
    assert result.returncode == -9
    assert journal_path(path).exists()


@pytest.mark.parametrize("first", ["inspect", "open", "rewrap"])
def test_the_next_command_finishes_a_torn_rewrap(
    sealed: tuple[Path, Path, bytes], first: str
) -> None:
    path, mek_file, data = sealed
    alice = modelseal.generate_identity()
    torn_rewrap(path, mek_file, modelseal.x25519_recipient_string(alice.recipient))
    bob = modelseal.generate_identity()
    if first == "inspect":
        assert [label.split(":")[0] for label in modelseal.inspect(path).recipients] == ["mek", "x25519"]
    elif first == "open":
        with modelseal.open(path, alice) as m:
            assert bytes(m.read()) == data
    else:
        modelseal.rewrap(path, modelseal.load_mek(mek_file), add=[bob.recipient], in_place=True)
    assert not journal_path(path).exists()
    for identity in (alice, modelseal.load_mek(mek_file)):
        with modelseal.open(path, identity) as m:
            assert bytes(m.read()) == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["MEK.dat", "m.mseal", "model.bin"]


def test_a_journal_for_a_replaced_file_is_dropped_without_touching_it(
    sealed: tuple[Path, Path, bytes], model_file: tuple[Path, bytes], mek: bytes
) -> None:
    path, mek_file, _ = sealed
    torn_rewrap(path, mek_file, modelseal.x25519_recipient_string(modelseal.generate_identity().recipient))
    modelseal.seal(model_file[0], path, mek=mek, overwrite=True)  # a fresh seal: another salt and core
    fresh = path.read_bytes()
    assert [label.split(":")[0] for label in modelseal.inspect(path).recipients] == ["mek"]
    assert not journal_path(path).exists() and path.read_bytes() == fresh


def test_a_foreign_journal_is_refused_by_name(sealed: tuple[Path, Path, bytes]) -> None:
    path, _, _ = sealed
    journal_path(path).write_bytes(b"not a journal")
    with pytest.raises(modelseal.OutputError, match="rewrap-journal is not a modelseal rewrap journal"):
        modelseal.inspect(path)
