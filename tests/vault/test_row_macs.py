"""Storage is untrusted: every field that decides a release is bound under the barrier.

The attacker holds the database file but not the root key. Each case sets up a refusal the vault
makes (a revoked device, a used-up licence, a retired key version, an auditor's token ...), then
edits the one decisive column with plain SQL on the file, the way that attacker would, and checks
the vault still refuses: the release with its uniform 403 and an audit record saying
``tampered_row``, an admin call with ``storage_tampered``. Before rows carried MACs, each of these
edits granted what the vault had refused (the `devices.revoked` flip was found that way).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelseal.vault.errors import PermissionDenied
from modelseal.vault.server import datadir
from modelseal.vault.server.device_rows import ReleaseDenied
from modelseal.vault.server.http_common import parse_release
from modelseal.vault.server.row_macs import RowTampered

from .release_helpers import LocalVault, build_request, local_vault

pytestmark = pytest.mark.faults

pytest.importorskip("sqlalchemy", reason="the vault extra is not installed")


@dataclass
class Scene:
    local: LocalVault
    db: Path
    psks: dict[str, bytes]

    def release(self, device: str) -> bytes:
        body = build_request(device, self.psks[device], self.local.sealed).body
        return self.local.devices.releases.release(parse_release(json.dumps(body).encode()))

    def sql(self, statement: str) -> None:
        db = sqlite3.connect(f"file:{self.db}?vfs=unix-excl", uri=True)
        try:
            with db:
                assert db.execute(statement).rowcount >= 1, statement
        finally:
            db.close()

    def last_outcome(self) -> dict[str, object]:
        db = sqlite3.connect(f"file:{self.db}?vfs=unix-excl", uri=True)
        try:
            (event,) = db.execute("SELECT event FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        finally:
            db.close()
        body = json.loads(event)
        assert isinstance(body, dict)
        return body


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    local = local_vault(tmp_path)
    psks: dict[str, bytes] = {}
    for name, groups in (("cam", ["edge"]), ("other", ["lab"])):
        psks[name] = local.devices.create_device(local.admin, name, groups)[1]
    local.devices.put_policy(local.admin, "p", "k", [], ["edge"])
    try:
        yield Scene(local, tmp_path / "v" / "vault.db", psks)
    finally:
        local.store.engine.dispose()


def refused_as_tampered(scene: Scene, device: str, table: str) -> None:
    with pytest.raises(ReleaseDenied):
        scene.release(device)
    record = scene.last_outcome()
    assert record["op"] == "key.release" and record["outcome"] == "tampered_row"
    assert str(record["tampered"]).startswith(f"{table}/")


def revoke(scene: Scene) -> None:
    scene.local.devices.revoke_device(scene.local.admin, "cam")


def licence(**terms: object) -> Callable[[Scene], None]:
    def make(scene: Scene) -> None:
        scene.local.devices.create_licence(
            scene.local.admin,
            "l",
            "p",
            not_after=terms.get("not_after"),  # type: ignore[arg-type]
            max_uses=terms.get("max_uses"),  # type: ignore[arg-type]
            max_devices=terms.get("max_devices"),  # type: ignore[arg-type]
        )
        if terms.get("use_once"):
            scene.release("cam")

    return make


def key_config(**config: object) -> Callable[[Scene], None]:
    def make(scene: Scene) -> None:
        scene.local.store.rotate_key(scene.local.admin, "k")
        terms = {"min_decryption_version": None, "disabled": None} | config
        scene.local.store.config_key(scene.local.admin, "k", **terms)  # type: ignore[arg-type]

    return make


def nothing(_: Scene) -> None:
    pass


# (what the vault refuses, the attacker's edit, the table that says it was changed)
CASES: dict[str, tuple[Callable[[Scene], None], str, str, str]] = {
    "devices.revoked": (revoke, "cam", "UPDATE devices SET revoked = 0 WHERE name = 'cam'", "devices"),
    "devices.groups": (
        nothing, "other", """UPDATE devices SET groups = '["edge"]' WHERE name = 'other'""", "devices"
    ),
    "devices.psk_generation": (
        nothing, "cam", "UPDATE devices SET psk_generation = 7 WHERE name = 'cam'", "devices"
    ),
    "devices.psk (swapped in from another device)": (
        nothing,
        "other",
        "UPDATE devices SET psk = (SELECT psk FROM devices WHERE name = 'cam') WHERE name = 'other'",
        "devices",
    ),
    "policies.groups": (nothing, "other", """UPDATE policies SET groups = '["edge","lab"]'""", "policies"),
    "policies.devices": (nothing, "other", """UPDATE policies SET devices = '["other"]'""", "policies"),
    "licences.uses": (licence(max_uses=1, use_once=True), "cam", "UPDATE licences SET uses = 0", "licences"),
    "licences.max_uses": (
        licence(max_uses=1, use_once=True), "cam", "UPDATE licences SET max_uses = 1000", "licences"
    ),
    "licences.not_after": (
        licence(not_after="2001-01-01T00:00:00Z"), "cam", "UPDATE licences SET not_after = 4e9", "licences"
    ),
    "licences.max_devices": (
        licence(max_devices=1, use_once=True), "other", "UPDATE licences SET max_devices = 9", "licences"
    ),
    "master_keys.disabled": (
        key_config(disabled=True), "cam", "UPDATE master_keys SET disabled = 0", "master_keys"
    ),
    "master_keys.min_decryption_version": (
        key_config(min_decryption_version=2), "cam", "UPDATE master_keys SET min_decryption_version = 1",
        "master_keys",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_decisive_field_edited_in_the_file_never_grants(scene: Scene, case: str) -> None:
    setup, device, edit, table = CASES[case]
    if case == "licences.max_devices":  # other may have the key; the licence's one slot is the limit
        scene.local.devices.put_policy(scene.local.admin, "p", "k", ["other"], ["edge"])
    setup(scene)
    if case not in ("devices.psk_generation", "devices.psk (swapped in from another device)"):
        with pytest.raises(ReleaseDenied):  # the vault's own refusal, before the edit
            scene.release(device)
    scene.sql(edit)
    if case == "devices.psk (swapped in from another device)":
        scene.psks["other"] = scene.psks["cam"]  # the attacker knows cam's PSK, wants other's rights
    refused_as_tampered(scene, device, table)


def test_a_forged_licence_device_row_does_not_make_a_device_known(scene: Scene) -> None:
    licence(max_devices=1, use_once=True)(scene)  # cam took the licence's only device slot
    scene.local.devices.put_policy(scene.local.admin, "p", "k", ["other"], ["edge"])
    with pytest.raises(ReleaseDenied):
        scene.release("other")
    scene.sql(
        "INSERT INTO licence_devices (licence_id, device_id, mac) SELECT l.id, d.id, x'00'"
        " FROM licences l, devices d WHERE d.name = 'other'"
    )
    refused_as_tampered(scene, "other", "licence_devices")


def test_the_untouched_rows_still_work_and_a_tampered_one_is_named(scene: Scene) -> None:
    assert len(scene.release("cam")) > 0
    scene.sql("UPDATE devices SET groups = '[\"edge\",\"x\"]' WHERE name = 'cam'")
    with pytest.raises(RowTampered, match=r"stored devices row \d+ fails its integrity check"):
        scene.local.devices.read_device(scene.local.admin, "cam")
    record = scene.last_outcome()
    assert record["op"] == "device.read" and record["outcome"] == "storage_tampered"


def test_tokens_role_and_revocation_are_bound(scene: Scene) -> None:
    store, admin = scene.local.store, scene.local.admin
    auditor, accessor = store.create_token(admin, "auditor")
    assert store.authenticate(auditor).role == "auditor"
    scene.sql(f"UPDATE tokens SET role = 'admin' WHERE accessor = '{accessor}'")
    with pytest.raises(RowTampered, match="tokens"):
        store.authenticate(auditor)
    revoked, accessor = store.create_token(admin, "operator")
    from modelseal.vault.server.tokens import TokenStore

    TokenStore(store).revoke(admin, accessor)
    with pytest.raises(PermissionDenied):
        store.authenticate(revoked)
    scene.sql(f"UPDATE tokens SET revoked = 0 WHERE accessor = '{accessor}'")
    with pytest.raises(RowTampered, match="tokens"):
        store.authenticate(revoked)


def test_a_row_whose_mac_was_cleared_stops_the_vault_from_starting(scene: Scene) -> None:
    scene.sql("UPDATE devices SET mac = NULL WHERE name = 'cam'")
    data = scene.db.parent
    with pytest.raises(RowTampered, match="devices"):
        datadir.DataDir(data).open_store()


def test_deleting_a_licence_slot_row_frees_no_slot(scene: Scene) -> None:
    """The licence's device count is a field of its MAC'd row, not a count of slot rows an attacker
    can delete: with cam's slot row gone, the one-device licence still refuses another device."""
    licence(max_devices=1, use_once=True)(scene)  # cam took the only device slot
    scene.local.devices.put_policy(scene.local.admin, "p", "k", ["other"], ["edge"])
    scene.sql("DELETE FROM licence_devices")
    with pytest.raises(ReleaseDenied):
        scene.release("other")
    assert scene.last_outcome()["outcome"] == "licence_device_limit"
    scene.sql("UPDATE licences SET device_count = 0")
    refused_as_tampered(scene, "other", "licences")
