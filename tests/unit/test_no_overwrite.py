"""A second command never destroys a key: every command that writes a key or secret refuses an
existing file (exit 7, one line naming -f/--force) and leaves it as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelseal
from modelseal.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [("keygen",), ("keygen", "--hex", "--bits", "128"), ("identity",), ("signer",)],
    ids=lambda c: " ".join(c),
)
def test_key_writers_refuse_an_existing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    target = tmp_path / "the.key"
    assert run(capsys, *command, "-o", target)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, err = run(capsys, *command, "-o", target)
    assert code == 7
    assert err.count("\n") == 1 and "already exists" in err and "-f/--force" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert run(capsys, *command, "-o", target, "--force")[0] == 0
    assert target.read_bytes() != before["the.key"]  # a new key, as asked
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # and no debris


def test_signer_checks_both_files_before_writing_either(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "owner.pub").write_text("someone else's public key\n")
    code, err = run(capsys, "signer", "-o", tmp_path / "owner.key")
    assert code == 7 and "owner.pub already exists" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owner.pub"]


def test_signer_never_writes_both_halves_to_one_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flags in ((), ("--force",)):
        code, err = run(capsys, "signer", "-o", tmp_path / "owner.pub", *flags)
        assert code == 2 and "ends in .pub" in err
    assert list(tmp_path.iterdir()) == []


def test_library_writers_refuse_unless_asked(tmp_path: Path) -> None:
    mek = tmp_path / "MEK.dat"
    modelseal.write_mek(modelseal.keygen(), mek)
    first = mek.read_bytes()
    with pytest.raises(modelseal.OutputError):
        modelseal.write_mek(modelseal.keygen(), mek)
    with pytest.raises(modelseal.OutputError):
        modelseal.write_x25519_identity(modelseal.generate_identity(), mek)
    assert mek.read_bytes() == first
    modelseal.write_mek(modelseal.keygen(), mek, overwrite=True)
    assert mek.read_bytes() != first and mek.stat().st_mode & 0o777 == 0o600
