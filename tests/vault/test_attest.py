"""Attestation-based key release over the real TLS vault: enrolment, challenges, the release and
every refusal (one body for all), lockout, the audit trail, and the migration that adds it.

The "card" here is a test double that holds an identity key and an X25519 session key and signs
real `modelseal.keyrelease.report.Report`s, so each refusal can be made precisely (a stale timestamp,
another measurement, another key). tests/device/test_vault_release.py runs the real card process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import text

import modelseal
from modelseal.cli.main import main
from modelseal.device import attestation_pb2 as pb
from modelseal.device.server import DeviceService
from modelseal.keyrelease import wire
from modelseal.keyrelease.report import Report, request_digest
from modelseal.vault.errors import PermissionDenied
from modelseal.vault.server.attestation import make_nonce
from modelseal.vault.server.barrier import KeyFileBarrier
from modelseal.vault.server.engine import make_engine, sqlite_url
from modelseal.vault.server.http_common import DENIED_BODY

from .conftest import VaultServer, start_server, stop_server
from .release_helpers import Sealed, build_request, device, encodings, post, seal_model, unique

MEASUREMENT = hashlib.sha256(b"card firmware 1").digest()



@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    """This module's own vault, which lets the tests open its SQLite file while it runs (they move
    challenges back in time and count their rows)."""
    server = start_server(tmp_path_factory.mktemp("attest-vault"), flags=("--sqlite-shared",))
    try:
        yield server
    finally:
        stop_server(server)

def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# Each report made by a Card, and the challenge it was made over.
NONCE_OF: dict[bytes, bytes] = {}


@dataclass
class Card:
    """A card's keys: what signs reports and what opens the vault's answers."""

    identity: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    session: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    card_id: int = 3

    def report(
        self,
        nonce: bytes,
        *,
        timestamp: int | None = None,
        measurement: bytes = MEASUREMENT,
        signer: Ed25519PrivateKey | None = None,
    ) -> bytes:
        unsigned = Report(
            self.card_id,
            self.session.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            request_digest(nonce),
            measurement,
            1,
            int(time.time()) if timestamp is None else timestamp,
        )
        signed = unsigned.signed_by(signer or self.identity).to_bytes()
        NONCE_OF[signed] = nonce  # what a host sends beside the report (release_body)
        return signed

    def open(self, name: str, sealed: Sealed, nonce: bytes, answer: dict[str, Any]) -> bytes:
        info = wire.attest_hpke_info(
            domain="default",
            device=name,
            key_name=sealed.recipient.key_name,
            key_version=sealed.recipient.key_version,
            nonce_digest=request_digest(nonce),
        )
        return wire.SUITE.decrypt(base64.b64decode(answer["sealed"]), self.session, info=info)


def call(vault: VaultServer, path: str, body: Any) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(vault.ca))
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{vault.url}/v1{path}", verify=context, timeout=10, **kwargs)


def challenge(vault: VaultServer, name: str) -> bytes:
    answer = call(vault, "/attest/challenge", {"device": name})
    assert answer.status_code == 200, answer.text
    assert answer.json()["expires_in"] == 60 and answer.headers["cache-control"] == "no-store"
    return base64.b64decode(answer.json()["nonce"])


def release_body(name: str, sealed: Sealed, report: bytes, nonce: bytes | None = None) -> dict[str, Any]:
    r = sealed.recipient
    nonce = nonce or NONCE_OF.get(report) or os.urandom(32)
    return {
        "nonce": base64.b64encode(nonce).decode(),
        "device": name,
        "report": base64.b64encode(report).decode(),
        "key_name": r.key_name,
        "key_version": r.key_version,
        "wrapped": base64.b64encode(r.wrapped).decode(),
    }


def release(
    vault: VaultServer, name: str, sealed: Sealed, report: bytes, nonce: bytes | None = None
) -> httpx.Response:
    return call(vault, "/attest/release", release_body(name, sealed, report, nonce))


def enrolled(
    vault: VaultServer, card: Card, *, measurement: bytes | None = MEASUREMENT, policy_for: str | None = None
) -> str:
    """A new vault device with the card's identity enrolled, and policy p-NAME for ``policy_for``."""
    name, _ = device(vault)
    with vault.client() as admin:
        admin.enroll_device(name, raw(card.identity), measurement)
        if policy_for is not None:
            admin.put_policy(f"p-{name}", policy_for, devices=[name])
    return name


def audit_since(vault: VaultServer, start: int) -> list[dict[str, Any]]:
    with vault.client() as admin:
        return [r["event"] for r in admin.audit(after=start, limit=1000)]


def audit_head(vault: VaultServer) -> int:
    with vault.client() as admin:
        return int(admin.audit(limit=1000)[-1]["seq"]) if admin.audit(limit=1) else 0


def expired_nonce(vault: VaultServer, name: str) -> bytes:
    """A challenge the vault issued to ``name`` three minutes ago (its TTL is one), made with the
    vault's own root: challenges are stateless, their time is inside them."""
    barrier = KeyFileBarrier.from_file(vault.data / "root.key")
    return make_nonce(barrier, "default", name, int(time.time()) - 180)


# --- the wire format --------------------------------------------------------------------------


def test_attest_hpke_info_layout_and_label() -> None:
    digest = bytes(range(32))
    built = wire.attest_hpke_info(
        domain="default", device="cam-17", key_name="models-2026", key_version=2, nonce_digest=digest
    )
    expected = b"modelseal vault attested release hpke v1\x00" + b"".join(
        struct.pack(">I", len(v)) + v
        for v in (b"default", b"cam-17", b"models-2026", b"\x00\x00\x00\x02", digest)
    )
    assert built == expected
    # Its own label: never the PSK release's info for the same fields.
    assert built != wire.hpke_info(
        domain="default", device="cam-17", key_name="models-2026", key_version=2, nonce=digest
    )


# --- enrolment ----------------------------------------------------------------------------------


def test_enrolment_metadata_roles_and_audit(
    vault: VaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = Card()
    name, _ = device(vault)
    start = audit_head(vault)
    with vault.client() as admin:
        assert admin.read_device(name)["identity"] is None
        meta = admin.enroll_device(name, raw(card.identity), MEASUREMENT)
        assert meta["identity"]["public_key"] == base64.b64encode(raw(card.identity)).decode()
        assert meta["identity"]["measurement"] == MEASUREMENT.hex() and meta["identity"]["generation"] == 1
        assert admin.read_device(name)["identity"] == meta["identity"]
    with vault.client(vault.token_file("auditor", tmp_path)) as auditor, pytest.raises(PermissionDenied):
        auditor.enroll_device(name, raw(Card().identity))
    assert call(vault, f"/devices/{name}/identity", {"public_key": "x"}).status_code == 401  # no token
    with vault.client(vault.token_file("operator", tmp_path)) as operator:
        again = operator.enroll_device(name, raw(card.identity), None)["identity"]
        assert again["measurement"] is None and again["generation"] == 2
        for bad in (
            {"public_key": "AAAA"},
            {"public_key": base64.b64encode(bytes(32)).decode(), "measurement": "ab"},
        ):
            answer = operator._http.post(f"/v1/devices/{name}/identity", json=bad)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_request"
        answer = operator._http.post(
            f"/v1/devices/{unique('nobody')}/identity",
            json={"public_key": base64.b64encode(raw(card.identity)).decode()},
        )
        assert answer.status_code == 404
    events = [e for e in audit_since(vault, start) if e["op"] == "device.enroll"]
    outcomes = [(e.get("device"), e.get("outcome"), e.get("measurement")) for e in events]
    assert (name, None, MEASUREMENT.hex()) in outcomes and (name, None, None) in outcomes
    assert any(e.get("outcome") == "permission_denied" for e in events)

    # The CLI takes the DEV.pub that `modelseal signer` writes for a card.
    key = tmp_path / "dev.key"
    pub, _ = modelseal.write_signer(card.identity, key)
    other, _ = device(vault)
    argv = ["vault", "device", "enroll", other, "--device-pub", str(pub), "--measurement", MEASUREMENT.hex()]
    argv += ["--vault", vault.url, "--token-file", str(vault.admin_token_file), "--ca", str(vault.ca)]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)["identity"]
    assert shown["public_key"] == base64.b64encode(raw(card.identity)).decode()
    assert shown["measurement"] == MEASUREMENT.hex()
    assert main([*argv[:6], "--measurement", "00", *argv[8:]]) == 2  # not 64 hex digits: usage error
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- the release --------------------------------------------------------------------------------


def test_attested_release_seals_the_file_key_to_the_session_key(
    vault: VaultServer, key_name: str, tmp_path: Path
) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    card = Card()
    name = enrolled(vault, card, policy_for=key_name)
    licence = unique("l")
    with vault.client() as admin:
        admin.create_licence(licence, f"p-{name}", max_uses=10)
    start = audit_head(vault)

    nonce = challenge(vault, name)
    answer = release(vault, name, sealed, card.report(nonce))
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    key = sealed.recipient.data_key
    assert not any(form in answer.content for form in encodings(key))
    assert card.open(name, sealed, nonce, answer.json()) == key
    assert answer.json()["key_name"] == key_name
    # Bound to the nonce (and device, key, version): another request's info does not open it.
    with pytest.raises(InvalidTag):
        card.open(name, sealed, os.urandom(32), answer.json())
    with pytest.raises(InvalidTag):  # and only the session key opens it
        Card(identity=card.identity).open(name, sealed, nonce, answer.json())
    with vault.client() as admin:
        assert admin.read_licence(licence)["uses"] == 1  # the same licence counting as PSK releases

    (record,) = [e for e in audit_since(vault, start) if e["op"] == "key.release"]
    assert record["outcome"] == "released" and record["proof"] == "attestation"
    assert record["device"] == name and record["key"] == key_name and record["licences"] == [licence]
    assert record["card_id"] == 3 and record["measurement"] == MEASUREMENT.hex()
    assert len(record["data_key_hmac"]) == 64
    text_ = json.dumps(record).encode()
    for secret in (key, nonce):
        assert not any(form in text_ for form in encodings(secret))


def test_a_real_card_report_is_accepted(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    """The report bytes the emulated card's GetAttestationReport returns, unchanged."""
    sealed = seal_model(vault, key_name, tmp_path)
    identity = Ed25519PrivateKey.generate()
    card = DeviceService(9, identity, notice=lambda _: None)
    name = enrolled(vault, Card(identity=identity), measurement=card.measurement, policy_for=key_name)
    nonce = challenge(vault, name)
    report = card.attestation_report(pb.AttestationRequest(device_id=9, request=nonce)).SerializeToString()
    answer = release(vault, name, sealed, report, nonce)
    assert answer.status_code == 200 and len(base64.b64decode(answer.json()["sealed"])) == 80


def test_every_refusal_is_the_same_403_and_audited(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    card, stranger = Card(), Card()
    name = enrolled(vault, card, policy_for=key_name)
    other = enrolled(vault, stranger, policy_for=key_name)
    revoked_card = Card()
    revoked = enrolled(vault, revoked_card, policy_for=key_name)
    no_policy_card = Card()
    no_policy = enrolled(vault, no_policy_card)
    unenrolled, _ = device(vault)
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with vault.client() as admin:
        expired_policy, group = unique("p"), unique("g")
        admin.put_policy(expired_policy, key_name, groups=[group])
        admin.create_licence(unique("l"), expired_policy, not_after=past)
    # Matched only through the group of a policy whose licence has ended.
    licensed_dev, _ = device(vault, [group])
    licensed_card = Card()
    with vault.client() as admin:
        admin.enroll_device(licensed_dev, raw(licensed_card.identity), MEASUREMENT)
    start = audit_head(vault)

    cases: dict[str, tuple[str, httpx.Response]] = {}

    def refuse(what: str, device_name: str, report: bytes, nonce: bytes | None = None) -> None:
        cases[what] = (device_name, release(vault, device_name, sealed, report, nonce))

    nonce = challenge(vault, name)
    forged = bytearray(card.report(nonce))
    forged[-5] ^= 1  # inside the signature
    refuse("bad_signature", name, bytes(forged), nonce)
    refuse("other_device", name, stranger.report(challenge(vault, name)))
    refuse("never_issued", name, card.report(os.urandom(32)))
    refuse("another_devices_nonce", name, card.report(challenge(vault, other)))
    used = challenge(vault, name)
    assert release(vault, name, sealed, card.report(used)).status_code == 200
    refuse("reused", name, card.report(used))
    refuse("expired", name, card.report(expired_nonce(vault, name)))
    refuse("wrong_measurement", name, card.report(challenge(vault, name), measurement=bytes(32)))
    refuse("stale", name, card.report(challenge(vault, name), timestamp=int(time.time()) - 1000))
    refuse("future", name, card.report(challenge(vault, name), timestamp=int(time.time()) + 1000))
    revoked_nonce = challenge(vault, revoked)
    with vault.client() as admin:
        admin.revoke_device(revoked)
    refuse("revoked", revoked, revoked_card.report(revoked_nonce))
    refuse("no_policy", no_policy, no_policy_card.report(challenge(vault, no_policy)))
    refuse("unenrolled", unenrolled, card.report(challenge(vault, unenrolled)))
    refuse("unknown_device", unique("nobody"), card.report(challenge(vault, name)))
    refuse("licence_expired", licensed_dev, licensed_card.report(challenge(vault, licensed_dev)))

    shapes = {
        (a.status_code, a.content, tuple(sorted((k, v) for k, v in a.headers.items() if k != "date")))
        for _, a in cases.values()
    }
    assert len(shapes) == 1, {what: a.content for what, (_, a) in cases.items()}
    status, content, _ = shapes.pop()
    assert status == 403 and content == DENIED_BODY
    # ... and the same bytes a refused PSK release gets.
    psk_refusal = post(vault, build_request(unique("nobody"), bytes(32), sealed).body)
    assert psk_refusal.status_code == 403 and psk_refusal.content == DENIED_BODY

    reasons = [
        (e.get("device"), e["outcome"])
        for e in audit_since(vault, start)
        if e["op"] == "key.release" and e.get("proof") == "attestation"
    ]
    expected = {
        (name, "bad_signature"),
        (name, "unknown_nonce"),
        (name, "replay"),
        (name, "nonce_expired"),
        (name, "wrong_measurement"),
        (name, "stale_report"),
        (name, "future_report"),
        (revoked, "revoked"),
        (no_policy, "no_policy"),
        (unenrolled, "not_enrolled"),
        (None, "unknown_device"),
        (licensed_dev, "licence_expired"),
        (name, "released"),
    }
    assert expected <= set(reasons), expected - set(reasons)
    assert reasons.count((name, "bad_signature")) == 2  # forged, and another device's key
    assert reasons.count((name, "unknown_nonce")) == 2  # never issued, and issued to `other`
    with vault.client() as admin:
        assert admin.verify_audit()["records"] >= len(reasons)


def test_a_refused_report_still_consumes_its_nonce(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    card = Card()
    name = enrolled(vault, card, policy_for=key_name)
    nonce = challenge(vault, name)
    assert release(vault, name, sealed, card.report(nonce, measurement=bytes(32))).status_code == 403
    # Signed over a valid nonce: single use even though it was refused.
    assert release(vault, name, sealed, card.report(nonce)).status_code == 403
    # A forged report does not burn a nonce the device may still use.
    fresh = challenge(vault, name)
    assert release(vault, name, sealed, Card().report(fresh)).status_code == 403
    assert release(vault, name, sealed, card.report(fresh)).status_code == 200


def test_lockout_applies_to_reports_and_challenges(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    card = Card()
    name = enrolled(vault, card, policy_for=key_name)
    for _ in range(5):
        assert release(vault, name, sealed, Card().report(challenge(vault, name))).status_code == 403
    with vault.client() as admin:
        meta = admin.read_device(name)
        assert meta["locked"] and meta["recent_failures"] == 5
    # Locked: a challenge still answers (uniformly) but its nonce is never usable.
    assert release(vault, name, sealed, card.report(challenge(vault, name))).status_code == 403
    with vault.client() as admin:
        admin.unlock_device(name)
    assert release(vault, name, sealed, card.report(challenge(vault, name))).status_code == 200


def test_challenge_answers_alike_and_bounds_its_input(vault: VaultServer) -> None:
    card = Card()
    name = enrolled(vault, card)
    unenrolled, _ = device(vault)
    shapes = set()
    for who in (name, unenrolled, unique("nobody")):
        answer = call(vault, "/attest/challenge", {"device": who})
        body = answer.json()
        assert answer.status_code == 200 and len(base64.b64decode(body["nonce"])) == 32
        shapes.add((tuple(sorted(body)), body["expires_in"], answer.headers["content-type"]))
    assert len(shapes) == 1
    for bad, field_name in (({"device": ""}, "device"), ({"device": 7}, "device"), ([1], "body")):
        answer = call(vault, "/attest/challenge", bad)
        assert answer.status_code == 400 and field_name in answer.json()["error"]["message"]
    assert call(vault, "/attest/challenge", b"{" + b" " * 2000 + b"}").status_code == 413


def test_malformed_release_requests_are_400_naming_the_field(
    vault: VaultServer, key_name: str, tmp_path: Path
) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    card = Card()
    good = release_body("cam", sealed, card.report(os.urandom(32)))
    for change, field_name in (
        ({"report": "not base64!"}, "report"),
        ({"report": base64.b64encode(b"\xff" * 40).decode()}, "report"),
        ({"report": base64.b64encode(os.urandom(5000)).decode()}, "report"),
        ({"wrapped": "AAAA"}, "wrapped"),
        ({"key_version": True}, "key_version"),
        ({"device": "x" * 129}, "device"),
    ):
        answer = call(vault, "/attest/release", {**good, **change})
        assert answer.status_code == 400, change
        assert answer.json()["error"]["message"] == f"invalid request field: {field_name}"
        assert good["report"] not in answer.text
    assert call(vault, "/attest/release", b"{" + b" " * 9000 + b"}").status_code == 413


# --- the migration ------------------------------------------------------------------------------


def test_migration_0004_adds_identity_and_nonces_to_an_existing_vault(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from modelseal.vault.server import store as store_module
    from modelseal.vault.server.attestation import Attestation
    from modelseal.vault.server.barrier import KeyFileBarrier
    from modelseal.vault.server.devices import DeviceStore
    from modelseal.vault.server.engine import upgrade_schema
    from modelseal.vault.server.row_macs import bind_unbound
    from modelseal.vault.server.store import Store

    engine = make_engine(sqlite_url(tmp_path))
    config = Config()
    config.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    store = Store(engine, KeyFileBarrier(bytes(range(32))))
    with engine.begin() as conn:  # a device made before 0004, by the 0003 schema
        conn.execute(
            text(
                "INSERT INTO devices (domain_id, name, groups, created, psk_generation, psk_rotated, psk,"
                " revoked) VALUES (1, 'old-cam', '[]', 'then', 1, 'then', x'00', 0)"
            )
        )
    upgrade_schema(engine)
    with store.write_session() as session:  # what `vault audit anchor` does for an older vault
        assert bind_unbound(session, store.barrier) == 1
    admin = store.authenticate(store.bootstrap_admin())
    devices = DeviceStore(store)
    attestation = Attestation(devices)
    assert devices.read_device(admin, "old-cam")["identity"] is None
    meta = attestation.enroll(admin, "old-cam", raw(Ed25519PrivateKey.generate()), None)
    assert meta["identity"]["generation"] == 1
    assert len(attestation.challenge("default", "old-cam")) == 32
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM attest_nonces")).scalar() == 0  # stateless
        # At head: 0004 or a later migration (0005 adds token usage).
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert isinstance(version, str) and version >= "0004"
    engine.dispose()


@pytest.mark.faults
def test_a_flood_of_challenges_stores_nothing_and_evicts_nothing(
    vault: VaultServer, key_name: str, tmp_path: Path
) -> None:
    """Anyone may ask for challenges under any device's name: before, the vault kept the 32 newest
    per device, so 32 requests evicted a real device's challenge (403 on its genuine report). Now a
    challenge is a MAC'd (time, random) pair, stored nowhere until a report over it comes back."""
    sealed = seal_model(vault, key_name, tmp_path)
    card = Card()
    name = enrolled(vault, card, policy_for=key_name)

    def rows() -> int:
        engine = make_engine(sqlite_url(vault.data), shared_sqlite=True)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM attest_nonces")).scalar() or 0)
        finally:
            engine.dispose()

    before = rows()
    first = challenge(vault, name)
    for _ in range(200):
        challenge(vault, name)
    assert rows() == before
    assert release(vault, name, sealed, card.report(first)).status_code == 200
    assert rows() == before + 1  # the used nonce, kept to refuse its replay
    assert release(vault, name, sealed, card.report(first)).status_code == 403


# --- in process: configuration ------------------------------------------------------------------


def test_max_report_age_is_configured_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelseal.vault.errors import KeyServiceError
    from modelseal.vault.server import attestation
    from modelseal.vault.server.barrier import KeyFileBarrier
    from modelseal.vault.server.device_rows import ReleaseDenied
    from modelseal.vault.server.devices import DeviceStore
    from modelseal.vault.server.engine import upgrade_schema
    from modelseal.vault.server.store import Store

    monkeypatch.delenv(attestation.ENV_MAX_REPORT_AGE, raising=False)
    assert attestation.max_report_age_from_env() == attestation.DEFAULT_MAX_REPORT_AGE
    monkeypatch.setenv(attestation.ENV_MAX_REPORT_AGE, "30")
    assert attestation.max_report_age_from_env() == 30.0
    for bad in ("0", "-5", "7200", "soon", "nan"):
        monkeypatch.setenv(attestation.ENV_MAX_REPORT_AGE, bad)
        with pytest.raises(KeyServiceError, match="MODELSEAL_VAULT_ATTEST_MAX_AGE"):
            attestation.max_report_age_from_env()

    engine = make_engine(sqlite_url(tmp_path))
    upgrade_schema(engine)
    store = Store(engine, KeyFileBarrier(bytes(range(32))))
    admin = store.authenticate(store.bootstrap_admin())
    devices = DeviceStore(store)
    service = attestation.Attestation(devices, max_report_age=30)
    card = Card()
    devices.create_device(admin, "cam", [])
    service.enroll(admin, "cam", raw(card.identity), None)
    store.create_key(admin, "k")
    devices.put_policy(admin, "p", "k", ["cam"], [])
    data_key = store.datakey(admin, "k", plaintext=True)

    def attempt(age: int) -> bytes:
        nonce = service.challenge("default", "cam")
        report = Report.from_bytes(card.report(nonce, timestamp=int(time.time()) - age))
        return service.release(
            attestation.AttestedRelease("default", "cam", report, "k", 1, data_key.wrapped, nonce)
        )

    with pytest.raises(ReleaseDenied):
        attempt(45)
    assert len(attempt(5)) == 80
    outcomes = [
        r["event"]["outcome"]
        for r in store.audit_records(admin, 0, 1000)
        if r["event"]["op"] == "key.release"
    ]
    assert outcomes == ["stale_report", "released"]
    engine.dispose()
