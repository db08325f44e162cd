"""The `vault` recipient stanza with modelseal.seal/open and `modelseal seal --vault-key`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelseal
from modelseal.cli.main import main
from modelseal.format.header import Stanza
from modelseal.vault.client import VaultIdentity, VaultRecipient
from modelseal.vault.client.recipient import parse_args
from modelseal.vault.errors import KeyServiceError, PermissionDenied

from .conftest import VaultServer


def test_round_trip_rotation_and_disable(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    data = os.urandom(50_000)
    src.write_bytes(data)
    with vault.client() as client:
        client.create_key(key_name)
        old = VaultRecipient.prepare(client, key_name)
        modelseal.seal(src, tmp_path / "old.mseal", [old], mek=old.data_key)
        assert f"vault:{key_name}:1" in modelseal.inspect(tmp_path / "old.mseal").recipients
        identity = VaultIdentity(client)
        with modelseal.open(tmp_path / "old.mseal", identity) as model:
            assert bytes(model.read()) == data

        client.rotate_key(key_name)
        new = VaultRecipient.prepare(client, key_name)
        assert new.key_version == 2
        modelseal.seal(src, tmp_path / "new.mseal", [new], mek=new.data_key)
        assert f"vault:{key_name}:2" in modelseal.inspect(tmp_path / "new.mseal").recipients
        for name in ("old.mseal", "new.mseal"):  # old models keep opening after rotation
            with modelseal.open(tmp_path / name, identity) as model:
                assert bytes(model.read()) == data

        client.config_key(key_name, disabled=True)
        with pytest.raises(KeyServiceError, match=f"key '{key_name}' is disabled") as disabled:
            modelseal.open(tmp_path / "old.mseal", identity)
        assert disabled.value.code == "key_disabled"
        client.config_key(key_name, disabled=False)


def test_other_identities_and_tokens(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    src = tmp_path / "m.bin"
    src.write_bytes(b"weights")
    with vault.client() as client:
        client.create_key(key_name)
        recipient = VaultRecipient.prepare(client, key_name)
        with pytest.raises(modelseal.UsageError, match="only its own data key"):
            modelseal.seal(src, tmp_path / "x.mseal", [recipient], mek=modelseal.keygen())
        modelseal.seal(src, tmp_path / "m.mseal", [recipient], mek=recipient.data_key)
    with modelseal.open(tmp_path / "m.mseal", modelseal.MEK(recipient.data_key)) as model:
        assert bytes(model.read()) == b"weights"  # the data key is the MEK
    with vault.client(vault.token_file("auditor", tmp_path)) as auditor, pytest.raises(PermissionDenied):
        modelseal.open(tmp_path / "m.mseal", VaultIdentity(auditor))
    with vault.client() as client:
        client.create_key(f"{key_name}-b")
        other = VaultRecipient.prepare(client, f"{key_name}-b")
        modelseal.seal(src, tmp_path / "o.mseal", [other], mek=other.data_key)
        # rewrap in a stanza that names a key this vault lacks: skipped, so no identity matches
        modelseal.rewrap(
            tmp_path / "o.mseal",
            modelseal.MEK(other.data_key),
            add=[VaultRecipient("absent-key", 1, other.wrapped, other.data_key)],
            remove=[f"vault:{key_name}-b:1"],
            in_place=True,
        )
        with pytest.raises(modelseal.NoMatchingIdentityError):
            modelseal.open(tmp_path / "o.mseal", VaultIdentity(client))


@pytest.mark.parametrize(
    ("args", "body"),
    [
        ((b"k",), b"x" * 60),
        ((b"k", b"01"), b"x" * 60),
        ((b"k", b"1x"), b"x" * 60),
        ((b"\xff", b"1"), b"x" * 60),
        ((b"k", b"1"), b"x" * 59),
    ],
)
def test_malformed_stanzas_are_format_errors(args: tuple[bytes, ...], body: bytes) -> None:
    with pytest.raises(modelseal.FormatError):
        parse_args(Stanza("vault", args, body))


def test_cli_seal_with_vault(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(os.urandom(10_000))
    with vault.client() as client:
        client.create_key(key_name)
    common = [
        "--vault",
        vault.url,
        "--vault-key",
        key_name,
        "--vault-token-file",
        str(vault.admin_token_file),
    ]
    out = tmp_path / "model.mseal"
    assert main(["seal", str(src), "-o", str(out), *common, "--vault-ca", str(vault.ca), "-q"]) == 0
    assert f"vault:{key_name}:1" in modelseal.inspect(out).recipients
    with vault.client() as client, modelseal.open(out, VaultIdentity(client)) as model:
        assert bytes(model.read()) == src.read_bytes()
    # The CLI opens it through the vault too: verify and unseal with --vault instead of -i.
    token = str(vault.admin_token_file)
    opener = ["--vault", vault.url, "--vault-token-file", token, "--vault-ca", str(vault.ca)]
    assert main(["verify", str(out), *opener]) == 0
    assert main(["unseal", str(out), "-o", str(tmp_path / "back.onnx"), *opener, "-q"]) == 0
    assert (tmp_path / "back.onnx").read_bytes() == src.read_bytes()
    mek = tmp_path / "MEK.dat"
    modelseal.write_mek(modelseal.keygen(), mek)
    both = ["seal", str(src), "-o", str(tmp_path / "x.mseal"), *common, "--mek", str(mek)]
    assert main([*both, "--vault-ca", str(vault.ca)]) == 2
    assert (
        main(["seal", str(src), "-o", str(tmp_path / "z.mseal"), "--vault", vault.url, "--mek", str(mek)])
        == 2
    )
    # without the CA the vault's certificate is not trusted: unavailable, not silently insecure
    assert main(["seal", str(src), "-o", str(tmp_path / "y.mseal"), *common, "-q"]) == 15
    assert not (tmp_path / "y.mseal").exists()
