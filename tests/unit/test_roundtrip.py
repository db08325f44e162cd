from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelseal

CHUNK = 4096


def _open_all(path: Path, identity: modelseal.Identity | list[modelseal.Identity]) -> dict[str, bytes]:
    with modelseal.open(path, identity) as m:
        return {name: bytes(m.read(name)) for name in m.names()}


@pytest.mark.parametrize("mek_bits", [128, 256])
def test_mek_round_trip_file(tmp_path: Path, model_file: tuple[Path, bytes], mek_bits: int) -> None:
    src, data = model_file
    key = modelseal.keygen(mek_bits)
    modelseal.seal(src, tmp_path / "m.mseal", mek=key, chunk_size=CHUNK)
    assert _open_all(tmp_path / "m.mseal", modelseal.MEK(key)) == {"model.bin": data}


def test_x25519_round_trip_folder(tmp_path: Path, model_folder: tuple[Path, dict[str, bytes]]) -> None:
    src, contents = model_folder
    ident = modelseal.generate_identity()
    modelseal.seal(src, tmp_path / "f.mseal", [ident.recipient], chunk_size=CHUNK)
    assert _open_all(tmp_path / "f.mseal", ident) == contents


def test_passphrase_round_trip(tmp_path: Path, model_folder: tuple[Path, dict[str, bytes]]) -> None:
    src, contents = model_folder
    modelseal.seal(src, tmp_path / "p.mseal", [modelseal.Passphrase(b"correct horse", log_n=10)])
    assert _open_all(tmp_path / "p.mseal", modelseal.Passphrase(b"correct horse")) == contents
    with pytest.raises(modelseal.NoMatchingIdentityError):
        modelseal.open(tmp_path / "p.mseal", modelseal.Passphrase(b"wrong horse"))


def test_many_recipients_each_opens(tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes) -> None:
    src, data = model_file
    idents = [modelseal.generate_identity() for _ in range(5)]
    pw = modelseal.Passphrase(b"pw", log_n=10)
    modelseal.seal(src, tmp_path / "m.mseal", [i.recipient for i in idents] + [pw], mek=mek)
    everyone: list[modelseal.Identity] = [*idents, pw, modelseal.MEK(mek)]
    for identity in everyone:
        assert _open_all(tmp_path / "m.mseal", identity) == {"model.bin": data}
    # A list of identities: the non-matching ones are skipped.
    stranger = modelseal.generate_identity()
    assert _open_all(tmp_path / "m.mseal", [stranger, idents[3]]) == {"model.bin": data}


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 7])
def test_sizes_around_chunk_boundaries(tmp_path: Path, size: int, mek: bytes) -> None:
    src = tmp_path / "m.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    result = modelseal.seal(src, tmp_path / "m.mseal", mek=mek, chunk_size=CHUNK)
    assert result.chunk_count == max(1, -(-size // CHUNK))
    assert (tmp_path / "m.mseal").stat().st_size == result.sealed_length
    assert _open_all(tmp_path / "m.mseal", modelseal.MEK(mek)) == {"m.bin": data}


def test_read_returns_read_only_views_and_close_zeroizes(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, data = model_file
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek)
    model = modelseal.open(tmp_path / "m.mseal", modelseal.MEK(mek))
    view = model.read()
    assert view.readonly and bytes(view) == data
    model.close()
    assert model.closed
    with pytest.raises(ValueError):
        bytes(view)  # released by close()
    with pytest.raises(ValueError):
        model.read()


def test_multi_file_read_needs_a_name(
    tmp_path: Path, model_folder: tuple[Path, dict[str, bytes]], mek: bytes
) -> None:
    src, contents = model_folder
    modelseal.seal(src, tmp_path / "f.mseal", mek=mek)
    with modelseal.open(tmp_path / "f.mseal", modelseal.MEK(mek)) as m:
        assert m.is_folder and sorted(m.names()) == sorted(contents)
        with pytest.raises(modelseal.UsageError):
            m.read()
        with pytest.raises(modelseal.UsageError):
            m.read("missing.bin")
        # Files start page-aligned in the plaintext so runtimes can map weights directly.
        assert all(e.offset % 4096 == 0 for e in m.entries())


def test_metadata_is_public_and_authenticated(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, _ = model_file
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek, metadata={"name": "resnet", "version": 3})
    assert modelseal.inspect(tmp_path / "m.mseal").metadata == {"name": "resnet", "version": 3}
    with modelseal.open(tmp_path / "m.mseal", modelseal.MEK(mek)) as m:
        assert m.metadata == {"name": "resnet", "version": 3}


def test_seal_refuses_unopenable_and_existing_outputs(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, _ = model_file
    with pytest.raises(modelseal.UsageError):
        modelseal.seal(src, tmp_path / "m.mseal")
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek)
    before = (tmp_path / "m.mseal").read_bytes()
    with pytest.raises(modelseal.OutputError):
        modelseal.seal(src, tmp_path / "m.mseal", mek=mek)
    assert (tmp_path / "m.mseal").read_bytes() == before
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek, overwrite=True)
    assert (tmp_path / "m.mseal").read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_failed_seal_leaves_no_output(tmp_path: Path, mek: bytes) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a").write_bytes(b"x")
    os.mkfifo(folder / "pipe")
    with pytest.raises(modelseal.UsageError, match="not a regular file"):
        modelseal.seal(folder, tmp_path / "f.mseal", mek=mek)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_each_seal_uses_a_fresh_salt(tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes) -> None:
    src, _ = model_file
    modelseal.seal(src, tmp_path / "a.mseal", mek=mek)
    modelseal.seal(src, tmp_path / "b.mseal", mek=mek)
    a, b = (tmp_path / "a.mseal").read_bytes(), (tmp_path / "b.mseal").read_bytes()
    header = modelseal.inspect(tmp_path / "a.mseal").header_length
    assert a[header : header + 64] != b[header : header + 64]


def test_unseal_writes_file_and_folder_and_never_overwrites(
    tmp_path: Path, model_folder: tuple[Path, dict[str, bytes]], model_file: tuple[Path, bytes], mek: bytes
) -> None:
    folder, contents = model_folder
    modelseal.seal(folder, tmp_path / "f.mseal", mek=mek)
    out = tmp_path / "restored"
    modelseal.unseal(tmp_path / "f.mseal", modelseal.MEK(mek), out)
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == contents
    with pytest.raises(modelseal.OutputError):
        modelseal.unseal(tmp_path / "f.mseal", modelseal.MEK(mek), out)
    src, data = model_file
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek)
    modelseal.unseal(tmp_path / "m.mseal", modelseal.MEK(mek), tmp_path / "m.out")
    assert (tmp_path / "m.out").read_bytes() == data


def test_signed_model_verifies_without_a_key(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, _ = model_file
    owner = modelseal.generate_signer()
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek, signer=owner)
    report = modelseal.verify(tmp_path / "m.mseal", signer=owner.public_key())
    assert report.signature_checked and not report.payload_authenticated
    with pytest.raises(modelseal.SignatureError, match="different key"):
        modelseal.verify(tmp_path / "m.mseal", signer=modelseal.generate_signer().public_key())
    modelseal.seal(src, tmp_path / "u.mseal", mek=mek)
    with pytest.raises(modelseal.SignatureError, match="not signed"):
        modelseal.open(tmp_path / "u.mseal", modelseal.MEK(mek), signer=owner.public_key())


def test_verify_needs_something_to_check(tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes) -> None:
    src, _ = model_file
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek)
    with pytest.raises(modelseal.UsageError):
        modelseal.verify(tmp_path / "m.mseal")
    report = modelseal.verify(tmp_path / "m.mseal", modelseal.MEK(mek))
    assert report.payload_authenticated and report.files == 1


def test_foreign_and_empty_files_are_format_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "foreign").write_bytes(b"PK\x03\x04" + os.urandom(100))
    for name in ("empty", "foreign"):
        with pytest.raises(modelseal.FormatError):
            modelseal.inspect(tmp_path / name)
        with pytest.raises(modelseal.FormatError):
            modelseal.open(tmp_path / name, modelseal.MEK(bytes(32)))


def test_folder_links_to_files_are_followed_links_to_folders_refused(tmp_path: Path, mek: bytes) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc123").write_bytes(b"weights")
    snap = tmp_path / "snapshot"
    snap.mkdir()
    (snap / "model.safetensors").symlink_to(blobs / "abc123")  # Hugging Face cache layout
    modelseal.seal(snap, tmp_path / "s.mseal", mek=mek)
    assert _open_all(tmp_path / "s.mseal", modelseal.MEK(mek)) == {"model.safetensors": b"weights"}
    (snap / "loop").symlink_to(snap)
    with pytest.raises(modelseal.UsageError, match="links to a folder"):
        modelseal.seal(snap, tmp_path / "t.mseal", mek=mek)


def test_only_one_passphrase_per_model(tmp_path: Path, model_file: tuple[Path, bytes]) -> None:
    src, _ = model_file
    a, b = modelseal.Passphrase(b"a", log_n=10), modelseal.Passphrase(b"b", log_n=10)
    with pytest.raises(modelseal.UsageError, match="only one passphrase"):
        modelseal.seal(src, tmp_path / "m.mseal", [a, b])
    modelseal.seal(src, tmp_path / "m.mseal", [a])
    with pytest.raises(modelseal.UsageError, match="only one passphrase"):
        modelseal.rewrap(tmp_path / "m.mseal", a, add=[b], in_place=True)
    modelseal.rewrap(tmp_path / "m.mseal", a, add=[b], remove=["scrypt"], in_place=True)
    with pytest.raises(modelseal.NoMatchingIdentityError):
        modelseal.open(tmp_path / "m.mseal", modelseal.Passphrase(b"a"))
    modelseal.open(tmp_path / "m.mseal", modelseal.Passphrase(b"b")).close()


def test_metadata_must_be_strict_json(tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes) -> None:
    src, _ = model_file
    with pytest.raises(modelseal.UsageError, match="JSON"):
        modelseal.seal(src, tmp_path / "m.mseal", mek=mek, metadata={"accuracy": float("nan")})
    assert not (tmp_path / "m.mseal").exists()
