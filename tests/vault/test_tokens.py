"""Tokens after creation: list (metadata, never the token), revoke by accessor (refused at once,
audited), the last admin token of a domain kept, and the CLI's `vault token list|revoke`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelseal.cli.main import main
from modelseal.vault.client import read_token_file
from modelseal.vault.errors import KeyServiceError, NotFound, PermissionDenied

from .conftest import VaultServer


def new_token(server: VaultServer, role: str, folder: Path) -> tuple[Path, str]:
    """A token in a 0600 file, and its accessor."""
    with server.client() as admin:
        answer = admin.create_token(role, f"test {role}")
    path = folder / f"{role}-{answer['accessor']}.token"
    path.write_text(f"{answer['token']}\n")
    path.chmod(0o600)
    return path, str(answer["accessor"])


def initial_admin(server: VaultServer) -> str:
    with server.client() as admin:
        return next(str(t["accessor"]) for t in admin.list_tokens() if t["name"] == "initial admin")


def audit_events(server: VaultServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    with server.client() as admin:
        while records := admin.audit(after=after, limit=1000):
            found += [r["event"] for r in records]
            after = records[-1]["seq"]
    return found


def revocations(server: VaultServer, accessor: str) -> list[dict[str, Any]]:
    return [r for r in audit_events(server) if r["op"] == "token.revoke" and r["token_accessor"] == accessor]


def test_list_shows_metadata_and_never_a_token(vault: VaultServer, tmp_path: Path) -> None:
    operator, accessor = new_token(vault, "operator", tmp_path)
    with vault.client(operator) as op:
        op.list_keys()  # a use: last_used is set
    auditor, _ = new_token(vault, "auditor", tmp_path)
    with vault.client(auditor) as reader:
        tokens = reader.list_tokens()
    entry = next(t for t in tokens if t["accessor"] == accessor)
    assert set(entry) == {"accessor", "role", "name", "created", "last_used", "revoked", "revoked_at"}
    assert entry["role"] == "operator" and entry["name"] == "test operator" and entry["revoked"] is False
    assert entry["last_used"] is not None and entry["last_used"] >= entry["created"]
    listed = json.dumps(tokens)
    for token_file in (operator, auditor, vault.admin_token_file):
        assert read_token_file(token_file) not in listed
    with vault.client(operator) as op, pytest.raises(PermissionDenied) as refused:
        op.list_tokens()
    assert refused.value.status == 403


def test_a_revoked_token_is_refused_at_once_and_the_revocation_audited(
    vault: VaultServer, tmp_path: Path
) -> None:
    operator, accessor = new_token(vault, "operator", tmp_path)
    with vault.client(operator) as op:
        op.list_keys()
        with vault.client() as admin:
            answer = admin.revoke_token(accessor)
        assert answer["revoked"] is True and answer["revoked_at"] is not None
        # The same client, its pooled connection and all: the very next request is refused.
        with pytest.raises(PermissionDenied) as refused:
            op.list_keys()
    assert refused.value.status == 401 and refused.value.code == "unauthenticated"
    with vault.client() as admin:
        assert admin.revoke_token(accessor)["revoked"] is True  # idempotent
        entry = next(t for t in admin.list_tokens() if t["accessor"] == accessor)
    assert [r["already_revoked"] for r in revocations(vault, accessor)] == [False, True]
    assert entry["revoked"] is True and entry["revoked_at"] == answer["revoked_at"]


def test_revoke_refuses_unknown_and_malformed_accessors(vault: VaultServer, tmp_path: Path) -> None:
    operator, operator_accessor = new_token(vault, "operator", tmp_path)
    with vault.client() as admin:
        with pytest.raises(NotFound):
            admin.revoke_token("0123456789abcdef")
        # A token pasted where the accessor belongs: refused, and never echoed or audited.
        pasted = read_token_file(operator)
        with pytest.raises(KeyServiceError) as malformed:
            admin.revoke_token(pasted)
        assert malformed.value.code == "invalid_accessor" and pasted not in str(malformed.value)
    assert pasted not in json.dumps(audit_events(vault))
    with vault.client(operator) as op, pytest.raises(PermissionDenied) as refused:
        op.revoke_token(operator_accessor)
    assert refused.value.status == 403
    with vault.client(operator) as op:
        op.list_keys()  # the operator could not revoke itself: still valid


def test_the_last_admin_token_of_a_domain_cannot_be_revoked(
    make_vault: Callable[[], VaultServer], tmp_path: Path
) -> None:
    server = make_vault()
    first = server.admin_token_file
    first_accessor = initial_admin(server)
    with server.client() as admin, pytest.raises(KeyServiceError) as last:
        admin.revoke_token(first_accessor)
    assert last.value.status == 409 and last.value.code == "last_admin"
    assert "last admin token" in str(last.value)

    second, second_accessor = new_token(server, "admin", tmp_path)
    with server.client(second) as admin2:
        assert admin2.revoke_token(first_accessor)["revoked"] is True
        with pytest.raises(KeyServiceError) as itself:
            admin2.revoke_token(second_accessor)
        assert itself.value.code == "last_admin"
        admin2.list_keys()
    with server.client(first) as gone, pytest.raises(PermissionDenied):
        gone.list_keys()


def test_token_list_and_revoke_over_the_cli(
    vault: VaultServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSEAL_VAULT_ADDR", vault.url)
    monkeypatch.setenv("MODELSEAL_VAULT_TOKEN_FILE", str(vault.admin_token_file))
    monkeypatch.setenv("MODELSEAL_VAULT_CA", str(vault.ca))
    auditor, accessor = new_token(vault, "auditor", tmp_path)
    assert main(["vault", "token", "list"]) == 0
    out, _ = capsys.readouterr()
    assert any(t["accessor"] == accessor for t in json.loads(out)["tokens"])
    assert read_token_file(auditor) not in out

    assert main(["vault", "token", "revoke", accessor]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out)["revoked"] is True
    assert main(["vault", "token", "list", "--token-file", str(auditor)]) == 13
    _, err = capsys.readouterr()
    assert "revoked" in err and read_token_file(auditor) not in err

    assert main(["vault", "token", "revoke", "msv.AAAA"]) == 2
    _, err = capsys.readouterr()
    assert "not its accessor" in err and "msv.AAAA" not in err
    assert main(["vault", "token", "revoke", "0123456789abcdef"]) == 14
