"""The real nginx gateway (deploy/nginx/modelseal-vault.conf) in front of a real vault, on loopback.

The template is rendered exactly as a deployment would render it (only the ${...} placeholders are
substituted) and included from a minimal main config, so what is tested is what ships. Every nginx
runs in the foreground on a free 127.0.0.1 port with its own prefix and is always stopped.

Without nginx the module skips (CI=true turns that into a failure: CI installs Debian's `nginx`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import modelseal
from modelseal.vault.client import VaultClient, VaultIdentity, VaultRecipient, read_token_file
from modelseal.vault.server import nginx as gateway_runner
from modelseal.vault.server.nginx import Gateway
from modelseal.vault.server.tls import new_ca

from .conftest import VaultServer

NGINX = gateway_runner.find_nginx()
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian/Ubuntu: apt-get install nginx)"
)

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "modelseal-vault.conf"
IDENTITY_HEADERS = (
    "x-client-verify",
    "x-client-cert-subject",
    "x-client-cert-issuer",
    "x-client-cert-serial",
    "x-client-cert-fingerprint",
)


# --- certificates -------------------------------------------------------------------------------


@dataclass
class CA:
    pem: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def make_ca(folder: Path, name: str) -> CA:
    key, cert = new_ca(name, days=2)
    pem = folder / f"{name.replace(' ', '-')}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(pem, cert, key)


def issue(ca: CA, folder: Path, name: str, *, server: bool) -> tuple[Path, Path]:
    """A leaf for 127.0.0.1/localhost (server) or a client certificate named CN=name."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    pem, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_file, key)
    return pem, key_file


@dataclass
class Pki:
    folder: Path
    gateway_ca: CA
    gateway_cert: tuple[Path, Path]
    client_ca: CA
    client_cert: tuple[Path, Path]
    stranger_cert: tuple[Path, Path]  # a client certificate from a CA the gateway does not trust

    def context(self, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.gateway_ca.pem))
        if client_cert is not None:
            context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("gateway-pki")
    gateway_ca = make_ca(folder, "gateway CA")
    client_ca = make_ca(folder, "client CA")
    stranger_ca = make_ca(folder, "stranger CA")
    return Pki(
        folder,
        gateway_ca,
        issue(gateway_ca, folder, "gateway", server=True),
        client_ca,
        issue(client_ca, folder, "model-builder", server=False),
        issue(stranger_ca, folder, "intruder", server=False),
    )


# --- nginx --------------------------------------------------------------------------------------


def render(values: dict[str, str]) -> str:
    return gateway_runner.render(TEMPLATE.read_text(), values)


def start_gateway(
    folder: Path, pki: Pki, *, upstream: str, upstream_ca: Path, client_verify: str = "optional"
) -> Gateway:
    values = {
        "GATEWAY_CERT": str(pki.gateway_cert[0]),
        "GATEWAY_KEY": str(pki.gateway_cert[1]),
        "CLIENT_CA": str(pki.client_ca.pem),
        "CLIENT_VERIFY": client_verify,
        "VAULT_UPSTREAM": upstream,
        "VAULT_CA": str(upstream_ca),
        "VAULT_TLS_NAME": "localhost",
    }
    return gateway_runner.start(folder, TEMPLATE.read_text(), values, nginx=NGINX)


stop_gateway = gateway_runner.stop


@pytest.fixture(scope="module")
def gateway(vault: VaultServer, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    started = start_gateway(
        tmp_path_factory.mktemp("nginx-optional"),
        pki,
        upstream=vault.url.removeprefix("https://"),
        upstream_ca=vault.ca,
    )
    try:
        yield started
    finally:
        stop_gateway(started)


@pytest.fixture(scope="module")
def mtls_gateway(vault: VaultServer, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    started = start_gateway(
        tmp_path_factory.mktemp("nginx-on"),
        pki,
        upstream=vault.url.removeprefix("https://"),
        upstream_ca=vault.ca,
        client_verify="on",
    )
    try:
        yield started
    finally:
        stop_gateway(started)


# --- an upstream that shows what the gateway forwarded -------------------------------------------


class _EchoHeaders(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # nginx keeps upstream connections alive

    def do_GET(self) -> None:
        body = json.dumps(list(self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keeps pytest output clean


@dataclass
class Echo:
    address: str
    ca: Path


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Echo]:
    ca = make_ca(tmp_path, "echo CA")
    cert, key = issue(ca, tmp_path, "echo", server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Echo(f"127.0.0.1:{server.server_address[1]}", ca.pem)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- tests --------------------------------------------------------------------------------------


def test_health_and_ready_through_gateway(gateway: Gateway, pki: Pki) -> None:
    with httpx.Client(base_url=gateway.url, verify=pki.context(), timeout=10) as http:
        health = http.get("/v1/sys/health")
        assert health.status_code == 200, health.text
        assert health.json() == {"status": "ok"}
        assert http.get("/v1/sys/ready").json()["status"] == "ready"
        assert health.headers["server"] == "nginx"  # server_tokens off: no version
        assert http.get("/").status_code == 404  # only /v1/ is published


def test_admin_token_creates_key_and_datakey(
    gateway: Gateway, pki: Pki, vault: VaultServer, key_name: str
) -> None:
    token = read_token_file(vault.admin_token_file)
    with httpx.Client(base_url=gateway.url, verify=pki.context(), timeout=10) as http:
        assert http.post(f"/v1/keys/{key_name}").status_code == 401  # the vault still decides
        auth = {"Authorization": f"Bearer {token}"}
        created = http.post(f"/v1/keys/{key_name}", headers=auth, json={"type": "aes256-gcm"})
        assert created.status_code == 200, created.text
        assert created.json()["latest_version"] == 1
        datakey = http.post(f"/v1/keys/{key_name}/datakey", headers=auth)
        assert datakey.status_code == 200, datakey.text
        assert set(datakey.json()) == {"key_name", "key_version", "wrapped"}
        assert datakey.headers["cache-control"] == "no-store"


def test_client_api_end_to_end(
    gateway: Gateway, pki: Pki, vault: VaultServer, key_name: str, tmp_path: Path
) -> None:
    token = read_token_file(vault.admin_token_file)
    src = tmp_path / "model.bin"
    data = os.urandom(20_000)
    src.write_bytes(data)
    with VaultClient(gateway.url, token, ca=pki.gateway_ca.pem) as client:
        assert client.health() == {"status": "ok"}
        client.create_key(key_name)
        answer = client.datakey(key_name, plaintext=True)
        assert answer.plaintext is not None
        assert client.unwrap(key_name, answer.key_version, answer.wrapped) == answer.plaintext
        recipient = VaultRecipient.prepare(client, key_name)
        modelseal.seal(src, tmp_path / "model.mseal", [recipient], mek=recipient.data_key)
        assert client.rotate_key(key_name)["latest_version"] == 2
        with modelseal.open(tmp_path / "model.mseal", VaultIdentity(client)) as model:
            assert bytes(model.read()) == data
        assert key_name in client.list_keys()
        assert client.audit(limit=1000)


def test_vault_certificate_is_verified(vault: VaultServer, pki: Pki, tmp_path: Path) -> None:
    # a gateway that trusts another CA must refuse to talk to the vault: 502, nothing forwarded
    wrong_ca = make_ca(tmp_path, "not the vault CA")
    started = start_gateway(
        tmp_path / "nginx", pki, upstream=vault.url.removeprefix("https://"), upstream_ca=wrong_ca.pem
    )
    try:
        response = httpx.get(f"{started.url}/v1/sys/health", verify=pki.context(), timeout=10)
        assert response.status_code == 502
        assert "upstream SSL certificate verify error" in started.error_log.read_text()
    finally:
        stop_gateway(started)


def test_forged_identity_headers_are_stripped(echo: Echo, pki: Pki, tmp_path: Path) -> None:
    started = start_gateway(tmp_path / "nginx", pki, upstream=echo.address, upstream_ca=echo.ca)
    forged = {
        "X-Client-Verify": "SUCCESS",
        "X-Client-Cert-Subject": "CN=admin",
        "X-Client-Cert-Fingerprint": "00" * 20,
        "X_Client_Verify": "SUCCESS",
        "X-Forwarded-For": "10.9.9.9",
        "X-Real-IP": "10.9.9.9",
        "Forwarded": "for=10.9.9.9",
    }
    try:
        with httpx.Client(base_url=started.url, verify=pki.context(), timeout=10) as http:
            seen = http.get("/v1/echo", headers=forged).json()
        with httpx.Client(base_url=started.url, verify=pki.context(pki.client_cert), timeout=10) as http:
            seen_with_cert = http.get("/v1/echo", headers=forged).json()
    finally:
        stop_gateway(started)

    def headers(pairs: list[list[str]]) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for name, value in pairs:
            result.setdefault(name.lower(), []).append(value)
        return result

    without = headers(seen)
    assert without["x-client-verify"] == ["NONE"]
    for name in IDENTITY_HEADERS[1:]:
        assert name not in without
    assert "x_client_verify" not in without
    assert "forwarded" not in without
    assert without["x-forwarded-for"] == ["127.0.0.1"]
    assert without["x-real-ip"] == ["127.0.0.1"]

    with_cert = headers(seen_with_cert)
    assert with_cert["x-client-verify"] == ["SUCCESS"]
    assert with_cert["x-client-cert-subject"] == ["CN=model-builder"]
    assert with_cert["x-client-cert-issuer"] == ["CN=client CA"]
    assert len(with_cert["x-client-cert-fingerprint"]) == 1
    assert with_cert["x-client-cert-fingerprint"] != ["00" * 20]


def test_optional_mode_refuses_an_untrusted_client_certificate(gateway: Gateway, pki: Pki) -> None:
    response = httpx.get(f"{gateway.url}/v1/sys/health", verify=pki.context(pki.stranger_cert), timeout=10)
    assert response.status_code == 400


def test_client_certificate_required(mtls_gateway: Gateway, pki: Pki, vault: VaultServer) -> None:
    url = f"{mtls_gateway.url}/v1/keys"
    auth = {"Authorization": f"Bearer {read_token_file(vault.admin_token_file)}"}
    assert httpx.get(url, headers=auth, verify=pki.context(), timeout=10).status_code in (400, 403)
    refused = httpx.get(url, headers=auth, verify=pki.context(pki.stranger_cert), timeout=10)
    assert refused.status_code in (400, 403)
    allowed = httpx.get(url, headers=auth, verify=pki.context(pki.client_cert), timeout=10)
    assert allowed.status_code == 200, allowed.text
    assert isinstance(allowed.json()["keys"], list)


def test_oversized_body_is_refused(gateway: Gateway, pki: Pki, vault: VaultServer, key_name: str) -> None:
    auth = {"Authorization": f"Bearer {read_token_file(vault.admin_token_file)}"}
    response = httpx.post(
        f"{gateway.url}/v1/keys/{key_name}/unwrap",
        headers=auth,
        content=b"x" * (300 * 1024),  # above client_max_body_size 256k
        verify=pki.context(),
        timeout=10,
    )
    assert response.status_code == 413


def test_a_large_sealed_model_uploads_and_downloads_through_the_gateway(
    gateway: Gateway, pki: Pki, vault: VaultServer, key_name: str, tmp_path: Path
) -> None:
    """Uploads have their own streamed location; other API bodies stay capped at 256 KiB."""
    token = read_token_file(vault.admin_token_file)
    plain, sealed = tmp_path / "big.bin", tmp_path / "big.mseal"
    plain.write_bytes(os.urandom(6 << 20))
    with VaultClient(gateway.url, token, ca=pki.gateway_ca.pem) as client:
        client.create_key(key_name)
        recipient = VaultRecipient.prepare(client, key_name)
        modelseal.seal(plain, sealed, [recipient], mek=recipient.data_key)
        model_id = f"big-{key_name}"
        meta = client.upload_model(model_id, sealed)
        assert meta["size"] == sealed.stat().st_size
        client.download_model(model_id, tmp_path / "back.mseal")
    assert (tmp_path / "back.mseal").read_bytes() == sealed.read_bytes()
    with httpx.Client(base_url=gateway.url, verify=pki.context(), timeout=10) as http:
        # the streamed location is for uploads only: a big body elsewhere is still refused by nginx
        big = http.post(f"/v1/models/{model_id}/content", content=b"x" * (300 << 10))
        assert big.status_code == 413
