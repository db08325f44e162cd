"""Client certificates on the vault itself (`vault serve --client-ca CA [--client-cert-required]`):
refused at the TLS layer without one (when required) or with one from another CA; a good one works,
also for the edge agent's `--client-cert/--client-key`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import modelseal
from modelseal.cli.main import main
from modelseal.vault.client import DeviceIdentity, VaultClient, VaultRecipient, read_token_file

from .agent_helpers import agent_process
from .conftest import VaultServer
from .release_helpers import unique
from .serve_helpers import log_records, tls_context, vault_with
from .test_gateway import issue, make_ca


@dataclass
class Certs:
    client_ca: Path
    good: tuple[Path, Path]
    stranger: tuple[Path, Path]  # a client certificate from a CA the vault does not trust


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("mtls-pki")
    client_ca = make_ca(folder, "vault client CA")
    stranger_ca = make_ca(folder, "stranger CA")
    return Certs(
        client_ca.pem,
        issue(client_ca, folder, "gateway", server=False),
        issue(stranger_ca, folder, "intruder", server=False),
    )


@pytest.fixture(scope="module")
def strict(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    folder = tmp_path_factory.mktemp("mtls-required")
    flags = ("--client-ca", str(certs.client_ca), "--client-cert-required")
    with vault_with(folder, *flags, client_cert=certs.good) as server:
        yield server


def requests_logged(server: VaultServer, route: str, at_least: int = 0) -> int:
    """Request lines for ``route`` in the log, once there are ``at_least`` (each is written after its
    answer). Counting one route keeps the start-up readiness probes, whose lines may land late on a
    busy machine, out of the count."""
    deadline = time.monotonic() + 10
    while True:
        count = sum(1 for r in log_records(server) if r["event"] == "request" and r["route"] == route)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def get(server: VaultServer, cert: tuple[Path, Path] | None, path: str = "/v1/sys/health") -> httpx.Response:
    token = read_token_file(server.admin_token_file)
    with httpx.Client(verify=tls_context(server, cert), timeout=5) as client:
        return client.get(server.url + path, headers={"Authorization": f"Bearer {token}"})


def test_a_required_client_certificate_is_checked_at_the_tls_layer(strict: VaultServer, certs: Certs) -> None:
    before = requests_logged(strict, "/v1/keys")
    assert get(strict, certs.good, "/v1/keys").status_code == 200
    for cert in (None, certs.stranger):
        with pytest.raises(httpx.TransportError):
            get(strict, cert, "/v1/keys")
    assert get(strict, certs.good, "/v1/keys").status_code == 200
    # Refused in the handshake: of the four attempts, only the two good ones reached the app.
    assert requests_logged(strict, "/v1/keys", before + 2) == before + 2
    started = [r for r in log_records(strict) if r["event"] == "serve"]
    assert started[-1]["client_certificates"] == "required"


def test_an_optional_client_certificate_must_verify_when_presented(certs: Certs, tmp_path: Path) -> None:
    with vault_with(tmp_path, "--client-ca", str(certs.client_ca)) as server:
        assert get(server, None, "/v1/keys").status_code == 200  # the token decides, as without mTLS
        assert get(server, certs.good, "/v1/keys").status_code == 200
        with pytest.raises(httpx.TransportError):
            get(server, certs.stranger)


def test_client_certificate_flags_are_checked_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "no-vault-needed")
    assert main(["vault", "serve", "--data", data, "--client-cert-required"]) == 2
    assert "--client-ca" in capsys.readouterr().err
    assert main(["vault", "serve", "--data", data, "--client-ca", str(tmp_path / "missing.pem")]) == 6
    assert "client CA" in capsys.readouterr().err
    flags = ["--client-ca", str(tmp_path / "missing.pem"), "--insecure-http"]
    assert main(["vault", "serve", "--data", data, *flags]) == 2


def test_the_agent_reaches_a_vault_that_requires_client_certificates(
    strict: VaultServer, certs: Certs, tmp_path: Path
) -> None:
    key_name, name = unique("k"), unique("dev")
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights" * 1000)
    sealed = tmp_path / "model.mseal"
    token = read_token_file(strict.admin_token_file)
    with VaultClient(strict.url, token, ca=strict.ca, client_cert=certs.good) as admin:
        admin.create_key(key_name)
        recipient = VaultRecipient.prepare(admin, key_name)
        _, psk = admin.create_device(name)
        admin.put_policy(unique("p"), key_name, devices=[name])
    modelseal.seal(source, sealed, [recipient], mek=recipient.data_key)

    flags = ("--client-cert", str(certs.good[0]), "--client-key", str(certs.good[1]))
    with (
        agent_process(strict.url, strict.ca, tmp_path / "agent", *flags) as agent,
        modelseal.open(sealed, DeviceIdentity(agent.address, name, psk)) as model,
    ):
        assert bytes(model.read()) == source.read_bytes()
    with (
        agent_process(strict.url, strict.ca, tmp_path / "bare") as bare,
        httpx.Client(transport=httpx.HTTPTransport(uds=str(bare.socket)), base_url="http://agent") as c,
    ):
        assert c.get("/v1/agent/health").json()["vault"] == "unreachable"
