"""Vault objects whose secret goes to a local file: the file is checked before anything is created,
and if writing it fails anyway (a full disk), what was created is withdrawn, so no device or token
exists whose secret nobody holds."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelseal.cli.main import main

from .conftest import VaultServer
from .release_helpers import unique


@pytest.fixture
def admin_env(vault: VaultServer, monkeypatch: pytest.MonkeyPatch) -> VaultServer:
    monkeypatch.setenv("MODELSEAL_VAULT_ADDR", vault.url)
    monkeypatch.setenv("MODELSEAL_VAULT_TOKEN_FILE", str(vault.admin_token_file))
    monkeypatch.setenv("MODELSEAL_VAULT_CA", str(vault.ca))
    return vault


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def accessors(capsys: pytest.CaptureFixture[str]) -> dict[str, bool]:
    code, out, _ = run(capsys, "vault", "token", "list")
    assert code == 0
    return {t["accessor"]: t["revoked"] for t in json.loads(out)["tokens"]}


@contextlib.contextmanager
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs filled to the last byte (root only): files can be created, not written."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "full"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True)
    try:
        with open(where / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_an_existing_psk_file_refuses_before_the_device_is_created(
    admin_env: VaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("cam")
    psk = tmp_path / "cam.psk"
    psk.write_text("the PSK of another device\n")
    code, _, err = run(capsys, "vault", "device", "create", name, "--psk-out", psk)
    assert code == 7 and "already exists" in err and "-f/--force" in err
    assert psk.read_text() == "the PSK of another device\n"
    assert run(capsys, "vault", "device", "read", name)[0] == 14  # never created
    code, out, _ = run(capsys, "vault", "device", "create", name, "--psk-out", psk, "--force")
    assert code == 0 and json.loads(out)["name"] == name
    assert f"# device: {name}" in psk.read_text() and psk.stat().st_mode & 0o777 == 0o600


def test_an_existing_token_file_refuses_before_the_token_is_created(
    admin_env: VaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "op.token"
    out_file.write_text("keep me\n")
    before = accessors(capsys)
    code, _, err = run(capsys, "vault", "token", "create", "--role", "operator", "-o", out_file)
    assert code == 7 and "-f/--force" in err and out_file.read_text() == "keep me\n"
    assert accessors(capsys) == before
    mek = tmp_path / "MEK.dat"
    mek.write_bytes(b"k" * 32)
    key = unique("k")
    assert run(capsys, "vault", "key", "create", key)[0] == 0
    code, _, err = run(capsys, "vault", "datakey", key, "--mek-out", mek)
    assert code == 7 and mek.read_bytes() == b"k" * 32


def test_a_device_whose_psk_cannot_be_written_is_revoked(
    admin_env: VaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("cam")
    with full_disk(tmp_path) as full:
        code, _, err = run(capsys, "vault", "device", "create", name, "--psk-out", full / "cam.psk")
        assert code == 7 and "No space left" in err and f"device {name} was revoked" in err
        assert err.count("\n") == 1
        assert sorted(os.listdir(full)) == ["filler"]
    code, out, _ = run(capsys, "vault", "device", "read", name)
    assert code == 0 and json.loads(out)["revoked"] is True


def test_a_token_that_cannot_be_written_is_revoked(
    admin_env: VaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = accessors(capsys)
    with full_disk(tmp_path) as full:
        code, _, err = run(capsys, "vault", "token", "create", "--role", "auditor", "-o", full / "a.token")
        assert code == 7 and "was revoked" in err and "msv." not in err
        assert sorted(os.listdir(full)) == ["filler"]
    after = accessors(capsys)
    (new,) = set(after) - set(before)
    assert after[new] is True
