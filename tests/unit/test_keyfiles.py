from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import modelseal


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("form", ["raw", "hex", "hex-newline"])
def test_mek_files(tmp_path: Path, size: int, form: str) -> None:
    key = os.urandom(size)
    data = {"raw": key, "hex": key.hex().encode(), "hex-newline": key.hex().upper().encode() + b"\n"}[form]
    (tmp_path / "MEK.dat").write_bytes(data)
    assert modelseal.load_mek(tmp_path / "MEK.dat").key == key
    identity = modelseal.load_identity(tmp_path / "MEK.dat")
    assert isinstance(identity, modelseal.MEK) and identity.key == key


def test_write_mek_round_trips_and_is_private(tmp_path: Path) -> None:
    key = modelseal.keygen(128)
    modelseal.write_mek(key, tmp_path / "MEK.dat", hex_form=True)
    assert (tmp_path / "MEK.dat").stat().st_mode & 0o777 == 0o600
    assert modelseal.load_mek(tmp_path / "MEK.dat").key == key


@pytest.mark.parametrize("data", [b"", b"short", os.urandom(24), b"z" * 64, os.urandom(100_000)])
def test_bad_key_files(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "k").write_bytes(data)
    with pytest.raises(modelseal.KeyFileError):
        modelseal.load_identity(tmp_path / "k")


def test_identity_and_recipient_forms(tmp_path: Path) -> None:
    ident = modelseal.generate_identity()
    printed = modelseal.write_x25519_identity(ident, tmp_path / "dev.key")
    assert (tmp_path / "dev.key").stat().st_mode & 0o777 == 0o600
    loaded = modelseal.load_identity(tmp_path / "dev.key")
    assert isinstance(loaded, modelseal.X25519Identity)
    assert modelseal.x25519_recipient_string(loaded.recipient) == printed
    raw = ident.recipient.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = ident.recipient.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.dat").write_bytes(raw)
    (tmp_path / "pub.pem").write_bytes(pem)
    (tmp_path / "pub.txt").write_text(printed + "\n")
    for value in (
        printed,
        str(tmp_path / "pub.dat"),
        str(tmp_path / "pub.pem"),
        str(tmp_path / "pub.txt"),
        str(tmp_path / "dev.key"),
    ):
        assert modelseal.x25519_recipient_string(modelseal.load_recipient(value)) == printed


def test_recipient_typo_is_caught_by_the_checksum() -> None:
    printed = modelseal.x25519_recipient_string(modelseal.generate_identity().recipient)
    i = len("ms-x25519:") + 5
    typo = printed[:i] + ("A" if printed[i] != "A" else "B") + printed[i + 1 :]
    with pytest.raises(modelseal.KeyFileError, match="checksum"):
        modelseal.load_recipient(typo)
    with pytest.raises(modelseal.KeyFileError):
        modelseal.load_recipient("not-a-recipient-or-file")


def test_signer_keys(tmp_path: Path) -> None:
    owner = modelseal.generate_signer()
    pub_path, printed = modelseal.write_signer(owner, tmp_path / "owner.key")
    assert pub_path == tmp_path / "owner.pub"
    assert (
        modelseal.ed25519_public_string(modelseal.load_signer(tmp_path / "owner.key").public_key()) == printed
    )
    assert modelseal.ed25519_public_string(modelseal.load_signer_public(pub_path)) == printed
    assert modelseal.ed25519_public_string(modelseal.load_signer_public(printed)) == printed
    with pytest.raises(modelseal.KeyFileError, match="signer key, not an identity"):
        modelseal.load_identity(tmp_path / "owner.key")
    with pytest.raises(modelseal.KeyFileError):
        modelseal.load_signer(pub_path)


def test_garbled_pem_is_a_key_file_error(tmp_path: Path) -> None:
    body = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    (tmp_path / "pub.pem").write_bytes(body)
    (tmp_path / "key.pem").write_bytes(body.replace(b"PUBLIC", b"PRIVATE"))
    with pytest.raises(modelseal.KeyFileError):
        modelseal.load_recipient(str(tmp_path / "pub.pem"))
    with pytest.raises(modelseal.KeyFileError):
        modelseal.load_signer_public(tmp_path / "pub.pem")
    with pytest.raises(modelseal.KeyFileError):
        modelseal.load_identity(tmp_path / "key.pem")


def test_key_strings_are_decoded_strictly() -> None:
    printed = modelseal.x25519_recipient_string(modelseal.generate_identity().recipient)
    noisy = printed[:15] + "!!*" + printed[15:]
    with pytest.raises(modelseal.KeyFileError):
        modelseal.load_recipient(noisy)


def test_standard_base64_characters_are_refused() -> None:
    printed = modelseal.x25519_recipient_string(modelseal.generate_identity().recipient)
    prefix, body = printed[:10], printed[10:]
    swapped = prefix + body.replace("-", "+").replace("_", "/")
    if swapped != printed:
        with pytest.raises(modelseal.KeyFileError, match="base64url"):
            modelseal.load_recipient(swapped)
    with pytest.raises(modelseal.KeyFileError, match="base64url"):
        modelseal.load_recipient(printed[:20] + "+" + printed[21:])
