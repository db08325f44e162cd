"""GET /v1/sys/metrics: Prometheus text that parses, counts that follow the traffic, bounded labels,
and who may scrape (admin/auditor token, or anyone with --metrics-public)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelseal.vault.client import read_token_file

from .conftest import VaultServer
from .release_helpers import build_request, device, post, seal_model, unique
from .serve_helpers import tls_context, vault_with

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(server: VaultServer, token_file: Path | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {read_token_file(token_file)}"} if token_file else {}
    return httpx.get(f"{server.url}/v1/sys/metrics", headers=headers, verify=tls_context(server), timeout=10)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(server: VaultServer, token_file: Path | None = None) -> Samples:
    response = scrape_text(server, token_file)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def test_metrics_count_requests_releases_and_audit(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    auditor = vault.token_file("auditor", tmp_path)
    before = scrape(vault, auditor)
    assert value(before, "modelseal_vault_sealed") == 0

    sealed = seal_model(vault, key_name, tmp_path)  # creates the key and a data key
    name, psk = device(vault)
    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, devices=[name])
    assert post(vault, build_request(name, psk, sealed).body).status_code == 200
    assert post(vault, build_request(name, bytes(32), sealed).body).status_code == 403
    assert post(vault, {"device": name}).status_code == 400
    stray = f"/v1/nothing-{uuid.uuid4().hex}"
    assert httpx.get(vault.url + stray, verify=tls_context(vault)).status_code == 401  # no token: no 404
    token = vault.admin_token_file.read_text().strip()
    bearer = {"Authorization": f"Bearer {token}"}
    found = httpx.get(vault.url + stray, headers=bearer, verify=tls_context(vault))
    assert found.status_code == 404

    response = scrape_text(vault, auditor)
    after = parse(response.text)
    release = "/v1/release"
    assert value(after, "modelseal_vault_releases_total", route=release, outcome="granted") == (
        value(before, "modelseal_vault_releases_total", route=release, outcome="granted") + 1
    )
    assert value(after, "modelseal_vault_releases_total", route=release, outcome="denied") == (
        value(before, "modelseal_vault_releases_total", route=release, outcome="denied") + 1
    )
    assert value(after, "modelseal_vault_releases_total", route=release, outcome="error") == (
        value(before, "modelseal_vault_releases_total", route=release, outcome="error") + 1
    )
    for status in ("200", "403", "400"):
        labels = {"method": "POST", "route": release, "status": status}
        assert value(after, "modelseal_vault_requests_total", **labels) >= (
            value(before, "modelseal_vault_requests_total", **labels) + 1
        )
    created = {"method": "POST", "route": "/v1/keys/{name}", "status": "200"}
    assert value(after, "modelseal_vault_requests_total", **created) > value(
        before, "modelseal_vault_requests_total", **created
    )
    count = "modelseal_vault_request_duration_seconds_count"
    assert value(after, count, route=release) == value(before, count, route=release) + 3
    assert value(after, "modelseal_vault_request_duration_seconds_bucket", route=release, le="+Inf") == (
        value(after, count, route=release)
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "modelseal_vault_requests_total", **unmatched) >= 1
    assert value(after, "modelseal_vault_audit_records") > value(before, "modelseal_vault_audit_records")
    assert value(after, "process_resident_memory_bytes") > 0
    # Labels are route templates: no device, key or path a client chose appears in the output.
    for chosen in (name, key_name, stray):
        assert chosen not in response.text


def test_metrics_need_an_admin_or_auditor_token(vault: VaultServer, tmp_path: Path) -> None:
    assert scrape_text(vault).status_code == 401
    operator = vault.token_file("operator", tmp_path)
    refused = scrape_text(vault, operator)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    assert "modelseal_vault_sealed" in scrape_text(vault, vault.admin_token_file).text
    with vault.client() as admin:
        records = [r["event"] for r in admin.audit(limit=1000)]
    assert any(r["op"] == "sys.metrics" and r.get("outcome") == "permission_denied" for r in records)


def test_public_metrics_answer_without_a_token_also_while_sealed(tmp_path: Path) -> None:
    with vault_with(tmp_path / "public", "--metrics-public") as server:
        first = scrape(server)
        assert value(first, "modelseal_vault_sealed") == 0
        assert value(first, "modelseal_vault_audit_records") >= 1
        with server.client() as admin:
            admin.create_key("k1")
            admin.seal_vault()
        refused = httpx.get(f"{server.url}/v1/keys", verify=tls_context(server))
        assert refused.status_code == 503
        sealed = scrape(server)
        assert value(sealed, "modelseal_vault_sealed") == 1
        # The sealed guard answers before routing: such requests count as `unmatched`.
        assert (
            value(sealed, "modelseal_vault_requests_total", method="GET", route="unmatched", status="503")
            == 1
        )
        assert value(sealed, "modelseal_vault_audit_records") > value(first, "modelseal_vault_audit_records")
