"""`modelseal vault ...` over the API: output, exit codes, tokens never on argv or in errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelseal
from modelseal.cli.main import main

from .conftest import VaultServer


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_key_commands(
    vault: VaultServer,
    key_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSEAL_VAULT_ADDR", vault.url)
    monkeypatch.setenv("MODELSEAL_VAULT_TOKEN_FILE", str(vault.admin_token_file))
    monkeypatch.setenv("MODELSEAL_VAULT_CA", str(vault.ca))
    code, out, _ = run(capsys, "vault", "key", "create", key_name)
    assert code == 0 and json.loads(out)["latest_version"] == 1
    code, out, _ = run(capsys, "vault", "key", "list")
    assert key_name in json.loads(out)["keys"]
    assert run(capsys, "vault", "key", "rotate", key_name)[0] == 0
    code, out, _ = run(capsys, "vault", "key", "read", key_name)
    assert json.loads(out)["latest_version"] == 2
    code, out, _ = run(capsys, "vault", "key", "config", key_name, "--min-decryption-version", "2")
    assert json.loads(out)["min_decryption_version"] == 2
    assert run(capsys, "vault", "key", "config", key_name)[0] == 2

    mek_file = tmp_path / "MEK.dat"
    code, out, _ = run(capsys, "vault", "datakey", key_name, "--mek-out", str(mek_file))
    answer = json.loads(out)
    assert code == 0 and answer["key_version"] == 2 and "plaintext" not in answer
    assert mek_file.stat().st_mode & 0o777 == 0o600 and len(modelseal.load_mek(mek_file).key) == 32

    assert run(capsys, "vault", "key", "read", f"{key_name}-none")[0] == 14
    assert run(capsys, "vault", "status")[0] == 0

    token_file = tmp_path / "auditor.token"
    code, out, err = run(capsys, "vault", "token", "create", "--role", "auditor", "-o", str(token_file))
    token = token_file.read_text().strip()
    assert code == 0 and token.startswith("msv.") and token not in out + err
    code, _, err = run(capsys, "vault", "key", "create", f"{key_name}-x", "--token-file", str(token_file))
    assert code == 13 and "may not" in err and token not in err
    code, out, _ = run(capsys, "vault", "token", "create", "--role", "operator", "--json")
    printed, meta = out.split("\n", 1)
    assert printed.startswith("msv.") and json.loads(meta)["role"] == "operator"


def test_usage_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MODELSEAL_VAULT_ADDR", "MODELSEAL_VAULT_TOKEN_FILE", "MODELSEAL_VAULT_CA"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = run(capsys, "vault", "key", "list")
    assert code == 2 and "MODELSEAL_VAULT_ADDR" in err
    code, _, err = run(capsys, "vault", "key", "list", "--vault", "https://127.0.0.1:9")
    assert code == 2 and "token" in err
    with pytest.raises(SystemExit):
        main(["vault", "key", "create", "k", "--token", "msv.secret"])  # no way to put a token on argv


def test_init_refuses_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "vault", "init", "--data", str(tmp_path / "v"))
    assert code == 0 and out.strip() == (tmp_path / "v" / "admin.token").read_text().strip()
    assert run(capsys, "vault", "init", "--data", str(tmp_path / "v"))[0] == 7
