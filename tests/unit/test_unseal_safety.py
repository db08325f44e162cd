"""A model sealed by a hostile key holder cannot make unseal write outside its output folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import modelseal
from modelseal.format import manifest
from modelseal.format.header import parse_header
from modelseal.format.keys import derive_file_keys
from modelseal.header_auth import assemble


def _with_manifest(sealed: Path, mek: bytes, rows: list[list[object]], out: Path) -> None:
    """Re-author a sealed model's manifest with the file key, as a malicious owner could."""
    data = sealed.read_bytes()
    header = parse_header(data[: modelseal.inspect(sealed).header_length])
    keys = derive_file_keys(mek, header.core.salt)
    plain = json.dumps({"kind": "folder", "files": rows}).encode()
    core = dataclasses.replace(header.core, manifest=manifest.seal(keys.manifest, plain))
    stanzas = [dataclasses.replace(s, mac=b"") for s in header.stanzas]
    new = assemble(mek, core, stanzas, header.header_length, header.signature)
    out.write_bytes(new.encode() + data[header.header_length :])


@pytest.mark.parametrize(
    "name",
    ["../evil", "/etc/evil", "a/../../evil", "a//b", "./a", "a\\..\\evil", "evil\x00.txt", ""],
)
def test_hostile_names_are_refused(tmp_path: Path, mek: bytes, name: str) -> None:
    (tmp_path / "m.bin").write_bytes(b"z" * 100)
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek)
    _with_manifest(tmp_path / "m.mseal", mek, [[name, 0, 100, 0]], tmp_path / "evil.mseal")
    with pytest.raises(modelseal.FormatError):
        modelseal.unseal(tmp_path / "evil.mseal", modelseal.MEK(mek), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    "rows",
    [
        [["a", 0, 60, 0], ["b", 50, 50, 0]],  # overlapping ranges
        [["a", 0, 101, 0]],  # past the payload
        [["a", 0, 10, 0], ["a/b", 4096, 0, 0]],  # a file that is also a folder
        [["a", 0, 10, 0], ["a", 0, 10, 0]],  # duplicate
    ],
)
def test_inconsistent_manifests_are_refused(tmp_path: Path, mek: bytes, rows: list[list[object]]) -> None:
    (tmp_path / "m.bin").write_bytes(b"z" * 100)
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek)
    _with_manifest(tmp_path / "m.mseal", mek, rows, tmp_path / "bad.mseal")
    with pytest.raises(modelseal.FormatError):
        modelseal.open(tmp_path / "bad.mseal", modelseal.MEK(mek))


def test_the_re_authoring_helper_itself_produces_valid_files(tmp_path: Path, mek: bytes) -> None:
    (tmp_path / "m.bin").write_bytes(b"z" * 100)
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek)
    _with_manifest(tmp_path / "m.mseal", mek, [["x/y.bin", 0, 100, 0]], tmp_path / "ok.mseal")
    modelseal.unseal(tmp_path / "ok.mseal", modelseal.MEK(mek), tmp_path / "out")
    assert (tmp_path / "out" / "x" / "y.bin").read_bytes() == b"z" * 100


def test_unseal_refuses_an_existing_symlink_as_output(tmp_path: Path, mek: bytes) -> None:
    (tmp_path / "m.bin").write_bytes(b"z" * 100)
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(modelseal.OutputError):
        modelseal.unseal(tmp_path / "m.mseal", modelseal.MEK(mek), tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


def test_names_that_are_not_utf8_and_odd_flags_are_refused(tmp_path: Path, mek: bytes) -> None:
    (tmp_path / "m.bin").write_bytes(b"z" * 100)
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek)
    for rows in ([["a\ud800b", 0, 100, 0]], [["a", 0, 100, True]], [["a", 0, 100, 1.0]], [["a", 0, 100, 2]]):
        _with_manifest(tmp_path / "m.mseal", mek, rows, tmp_path / "bad.mseal")
        with pytest.raises(modelseal.FormatError):
            modelseal.open(tmp_path / "bad.mseal", modelseal.MEK(mek))
