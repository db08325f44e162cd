"""The REST API end to end over TLS: keys, versions, data keys, unwrap, config, tokens and roles."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.cli.main import main
from modelseal.errors import UsageError
from modelseal.vault.client import VaultClient
from modelseal.vault.errors import KeyServiceError, NotFound, PermissionDenied, Unavailable

from .conftest import VaultServer


def raw(server: VaultServer, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else kw.pop("headers", {})
    context = ssl.create_default_context(cafile=str(server.ca))
    return httpx.request(method, f"{server.url}/v1{path}", headers=headers, verify=context, **kw)


def admin_token(server: VaultServer) -> str:
    return server.admin_token_file.read_text().strip()


def test_health_ready_openapi_without_token(vault: VaultServer) -> None:
    assert raw(vault, "GET", "/sys/health", None).json() == {"status": "ok"}
    assert raw(vault, "GET", "/sys/ready", None).json()["status"] == "ready"
    paths = raw(vault, "GET", "/openapi.json", None).json()["paths"]
    assert {"/v1/keys/{name}/datakey", "/v1/keys/{name}/unwrap", "/v1/tokens"} <= set(paths)


def test_tls_is_verified_against_the_vault_ca(vault: VaultServer) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{vault.url}/v1/sys/health", verify=True)  # system trust store: not our CA


def test_default_deny(vault: VaultServer, key_name: str) -> None:
    for token in (None, "msv.not-a-token"):
        response = raw(vault, "GET", "/keys", token)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    assert raw(vault, "POST", f"/keys/{key_name}", "msv.nope").status_code == 401
    basic = raw(vault, "GET", "/keys", None, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status_code == 401
    with VaultClient(vault.url, "msv.bad", ca=vault.ca) as client, pytest.raises(PermissionDenied) as e:
        client.list_keys()
    assert e.value.exit_code == 13 and "msv.bad" not in str(e.value)


def test_key_lifecycle(vault: VaultServer, key_name: str) -> None:
    with vault.client() as client:
        created = client.create_key(key_name)
        assert created["latest_version"] == 1 and created["type"] == "aes256-gcm"
        assert set(created) == {
            "name",
            "type",
            "created",
            "latest_version",
            "min_decryption_version",
            "disabled",
            "deletion_allowed",
            "versions",
        }  # metadata only: no material
        assert key_name in client.list_keys()
        with pytest.raises(KeyServiceError) as exists:
            client.create_key(key_name)
        assert exists.value.status == 409

        first = client.datakey(key_name, plaintext=True)
        assert first.key_version == 1 and first.plaintext is not None and len(first.plaintext) == 32
        assert client.datakey(key_name).plaintext is None
        assert client.unwrap(key_name, 1, first.wrapped) == first.plaintext

        rotated = client.rotate_key(key_name)
        assert rotated["latest_version"] == 2 and set(rotated["versions"]) == {"1", "2"}
        second = client.datakey(key_name, plaintext=True)
        assert second.key_version == 2
        assert client.unwrap(key_name, 1, first.wrapped) == first.plaintext  # old versions keep opening
        assert client.unwrap(key_name, 2, second.wrapped) == second.plaintext

        # The AAD binds a body to its key name and version.
        with pytest.raises(KeyServiceError) as wrong_version:
            client.unwrap(key_name, 2, first.wrapped)
        assert wrong_version.value.code == "invalid_wrapped_key"
        other = f"{key_name}-other"
        client.create_key(other)
        with pytest.raises(KeyServiceError, match="was not made by key"):
            client.unwrap(other, 1, first.wrapped)
        with pytest.raises(NotFound):
            client.unwrap(key_name, 7, first.wrapped)

        config = client.config_key(key_name, min_decryption_version=2)
        assert config["min_decryption_version"] == 2
        with pytest.raises(KeyServiceError) as retired:
            client.unwrap(key_name, 1, first.wrapped)
        assert retired.value.code == "version_retired" and retired.value.status == 409
        client.config_key(key_name, min_decryption_version=1)
        assert client.unwrap(key_name, 1, first.wrapped) == first.plaintext
        with pytest.raises(KeyServiceError, match=r"within 1\.\.2"):
            client.config_key(key_name, min_decryption_version=3)

        assert client.config_key(key_name, disabled=True)["disabled"] is True
        for call in (lambda: client.datakey(key_name), lambda: client.unwrap(key_name, 1, first.wrapped)):
            with pytest.raises(KeyServiceError) as disabled:
                call()
            assert disabled.value.code == "key_disabled" and disabled.value.exit_code == 12
        client.config_key(key_name, disabled=False)
        assert client.unwrap(key_name, 2, second.wrapped) == second.plaintext


def test_errors(vault: VaultServer, key_name: str) -> None:
    token = admin_token(vault)
    missing = raw(vault, "GET", f"/keys/{key_name}", token)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert raw(vault, "POST", "/keys/bad%20name", token).json()["error"]["code"] == "invalid_name"
    assert raw(vault, "POST", f"/keys/{key_name}", token, json={"type": "rsa"}).status_code == 400
    raw(vault, "POST", f"/keys/{key_name}", token)
    secretish = base64.b64encode(b"S" * 60).decode()
    bad = raw(vault, "POST", f"/keys/{key_name}/unwrap", token, json={"key_version": 0, "wrapped": secretish})
    assert bad.status_code == 400 and secretish not in bad.text  # validation errors never echo input
    bad64 = raw(vault, "POST", f"/keys/{key_name}/unwrap", token, json={"key_version": 1, "wrapped": "*"})
    assert bad64.status_code == 400
    datakey = raw(vault, "POST", f"/keys/{key_name}/datakey", token, params={"plaintext": "true"})
    assert datakey.headers["cache-control"] == "no-store"


def test_roles(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    with vault.client() as admin:
        admin.create_key(key_name)
        wrapped = admin.datakey(key_name).wrapped
    operator_file = vault.token_file("operator", tmp_path)
    auditor_file = vault.token_file("auditor", tmp_path)

    with vault.client(auditor_file) as auditor:
        assert key_name in auditor.list_keys()
        assert auditor.read_key(key_name)["name"] == key_name
        assert auditor.audit(limit=5)
        for call in (
            lambda: auditor.create_key(f"{key_name}-a"),
            lambda: auditor.rotate_key(key_name),
            lambda: auditor.config_key(key_name, disabled=True),
            lambda: auditor.datakey(key_name),
            lambda: auditor.unwrap(key_name, 1, wrapped),
            lambda: auditor.create_token("admin"),
            lambda: auditor.seal_vault(),
        ):
            with pytest.raises(PermissionDenied) as denied:
                call()
            assert denied.value.status == 403

    with vault.client(operator_file) as operator:
        operator.create_key(f"{key_name}-op")
        operator.rotate_key(key_name)
        assert len(operator.unwrap(key_name, 1, wrapped)) == 32
        with pytest.raises(PermissionDenied):
            operator.create_token("operator")
        with pytest.raises(PermissionDenied):
            operator.audit()
        with pytest.raises(PermissionDenied):
            operator.seal_vault()

    with vault.client() as admin:
        refused = [
            r["event"] for r in admin.audit(limit=1000) if r["event"].get("outcome") == "permission_denied"
        ]
        assert any(e["op"] == "token.create" for e in refused)  # refusals are audited too


def test_sealed_vault_answers_503(make_vault: Any, key_name: str) -> None:
    server: VaultServer = make_vault()
    with server.client() as client:
        client.create_key(key_name)
        assert client.seal_vault() == {"sealed": True}
        for call in (
            client.list_keys,
            lambda: client.datakey(key_name),
            lambda: client.read_key(key_name),
            lambda: client.create_token("operator"),
        ):
            with pytest.raises(Unavailable) as sealed:
                call()
            assert sealed.value.code == "sealed" and sealed.value.exit_code == 15
        with pytest.raises(Unavailable):
            client.ready()
        assert client.health() == {"status": "ok"}
    assert raw(server, "GET", "/keys", None).status_code == 503


def test_unreachable_vault_is_unavailable(tmp_path: Path) -> None:
    with VaultClient("https://127.0.0.1:9", "msv.x") as client, pytest.raises(Unavailable) as e:
        client.list_keys()
    assert "msv.x" not in str(e.value)


def test_a_token_is_never_sent_to_a_plain_http_vault_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match="refusing to send a vault token over plain http://"):
        VaultClient("http://127.0.0.1:9", "msv.secret-token")
    VaultClient("http://127.0.0.1:9", "msv.x", insecure_http=True).close()  # a test vault, asked for
    VaultClient("http://127.0.0.1:9").close()  # no token, nothing to leak (device routes)
    token = tmp_path / "token"
    token.write_text("msv.secret-token\n")
    token.chmod(0o600)
    base = ["vault", "key", "list", "--vault", "http://127.0.0.1:9", "--token-file", str(token)]
    assert main(base) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plain http://" in err and "msv.secret-token" not in err
    assert main([*base, "--insecure-http"]) == Unavailable.exit_code  # tried: nothing listens there


def test_an_untrusted_vault_certificate_is_named_with_the_fix(
    vault: VaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the raw `[SSL: CERTIFICATE_VERIFY_FAILED] … (_ssl.c:1006)` and no hint."""
    other_ca = tmp_path / "other-ca.pem"
    from modelseal.vault.server import tls

    tls.generate(tmp_path / "other")
    other_ca.write_bytes((tmp_path / "other" / tls.CA_FILE).read_bytes())
    with VaultClient(vault.url, ca=other_ca) as client, pytest.raises(Unavailable) as refused:
        client.health()
    assert refused.value.code == "untrusted_certificate"
    message = str(refused.value)
    assert f"the CA in {other_ca}" in message and "--ca or MODELSEAL_VAULT_CA" in message
    assert "_ssl.c" not in message
    token = vault.admin_token_file
    assert (
        main(
            ["vault", "key", "list", "--vault", vault.url, "--token-file", str(token), "--ca", str(other_ca)]
        )
        == 15
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "certificate is not trusted" in err
