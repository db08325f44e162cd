"""Key release to PSK devices over the real TLS server: policy, licence, revocation, replay, lockout."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

import modelseal
from modelseal.vault.errors import PermissionDenied

from .conftest import VaultServer
from .release_helpers import (
    Sealed,
    build_request,
    device,
    encodings,
    identity,
    open_answer,
    opens,
    post,
    seal_model,
    unique,
)


def refused(vault: VaultServer, sealed: Sealed, name: str, psk: bytes) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as e:
        modelseal.open(sealed.path, identity(vault, name, psk))
    assert e.value.code == "release_denied" and str(e.value) == "vault: key release refused"
    return e.value


def test_default_deny_then_policy_by_device_and_by_group(
    vault: VaultServer, key_name: str, tmp_path: Path
) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    group = unique("g")
    alone, alone_psk = device(vault)
    member, member_psk = device(vault, [group, "other"])
    outsider, outsider_psk = device(vault, [unique("g")])
    for name, psk in ((alone, alone_psk), (member, member_psk)):
        refused(vault, sealed, name, psk)  # no policy at all: default deny

    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, devices=[alone])
        assert opens(vault, sealed, alone, alone_psk)
        refused(vault, sealed, member, member_psk)
        admin.put_policy(unique("p"), key_name, groups=[group])
    assert opens(vault, sealed, member, member_psk)
    refused(vault, sealed, outsider, outsider_psk)
    # A policy for another key releases nothing of this one.
    with vault.client() as admin:
        admin.create_key(f"{key_name}-other")
        admin.put_policy(unique("p"), f"{key_name}-other", devices=[outsider])
    refused(vault, sealed, outsider, outsider_psk)


def test_revocation_and_psk_rotation(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    group = unique("g")
    a, a_psk = device(vault, [group])
    b, b_psk = device(vault, [group])
    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, groups=[group])
        assert opens(vault, sealed, a, a_psk)
        meta = admin.revoke_device(a)
        assert meta["revoked"] and "psk" not in meta and a_psk.hex() not in json.dumps(meta)
        refused(vault, sealed, a, a_psk)  # takes effect at commit: the very next release

        assert opens(vault, sealed, b, b_psk)
        meta, new_psk = admin.rotate_psk(b)
        assert meta["psk_generation"] == 2 and new_psk != b_psk
    refused(vault, sealed, b, b_psk)
    assert opens(vault, sealed, b, new_psk)


def test_replay_and_stale_timestamp_are_refused(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    name, psk = device(vault)
    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, devices=[name])

    request = build_request(name, psk, sealed)
    first = post(vault, request.body)
    assert first.status_code == 200
    assert open_answer(request, name, sealed, first.json()) == sealed.recipient.data_key
    replay = post(vault, request.body)  # the exact same bytes again
    assert replay.status_code == 403 and replay.json()["error"]["code"] == "release_denied"

    for skew in (-300, 300):
        stale = build_request(name, psk, sealed, timestamp=int(time.time()) + skew)
        assert post(vault, stale.body).status_code == 403
    # A stale or replayed request with the right PSK is no PSK failure: no lockout came of it.
    with vault.client() as admin:
        assert admin.read_device(name)["recent_failures"] == 0
    assert opens(vault, sealed, name, psk)

    bad = dict(request.body, nonce="AAAA")  # 3 bytes: malformed, rejected before any lookup
    answer = post(vault, bad)
    assert answer.status_code == 400 and "nonce" in answer.text and request.body["mac"] not in answer.text


def test_lockout_after_five_failures(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    name, psk = device(vault)
    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, devices=[name])
    wrong = bytes(32)
    for _ in range(5):
        refused(vault, sealed, name, wrong)
    refused(vault, sealed, name, psk)  # locked: even the right PSK is refused
    with vault.client() as admin:
        meta = admin.read_device(name)
        assert meta["locked"] and meta["recent_failures"] == 5
        assert admin.unlock_device(name)["locked"] is False
    assert opens(vault, sealed, name, psk)


def test_refusals_are_byte_identical(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    revoked, revoked_psk = device(vault)
    locked, locked_psk = device(vault)
    known, known_psk = device(vault)
    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, devices=[revoked, locked, known])
        admin.revoke_device(revoked)
    for _ in range(5):
        post(vault, build_request(locked, bytes(32), sealed).body)
    cases = {
        "unknown device": build_request(unique("nobody"), known_psk, sealed),
        "wrong psk": build_request(known, bytes(32), sealed),
        "revoked": build_request(revoked, revoked_psk, sealed),
        "locked": build_request(locked, locked_psk, sealed),
    }
    answers = {what: post(vault, r.body) for what, r in cases.items()}
    shapes = {
        (a.status_code, a.content, tuple(sorted((k, v) for k, v in a.headers.items() if k != "date")))
        for a in answers.values()
    }
    assert len(shapes) == 1, answers
    status, content, _ = shapes.pop()
    assert status == 403 and json.loads(content)["error"]["code"] == "release_denied"


def test_licences(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    group = unique("g")
    names = [device(vault, [group]) for _ in range(3)]
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with vault.client() as admin:
        expired = unique("p")
        admin.put_policy(expired, key_name, groups=[group])
        admin.create_licence(unique("l"), expired, not_after=past)
    for name, psk in names:
        refused(vault, sealed, name, psk)  # the only policy's licence has ended

    with vault.client() as admin:
        admin.put_policy(expired, key_name, devices=[])  # retire it: the group now matches nothing
        limited = unique("p")
        admin.put_policy(limited, key_name, groups=[group])
        uses, devices = unique("l"), unique("l")
        admin.create_licence(uses, limited, max_uses=3)
        admin.create_licence(devices, limited, max_devices=2, not_after="2999-01-01T00:00:00Z")
    (a, a_psk), (b, b_psk), (c, c_psk) = names
    assert opens(vault, sealed, a, a_psk)
    assert opens(vault, sealed, b, b_psk)
    refused(vault, sealed, c, c_psk)  # a third distinct device: max_devices reached
    assert opens(vault, sealed, a, a_psk)  # a known device still counts as one
    refused(vault, sealed, b, b_psk)  # max_uses reached (3 releases)
    with vault.client() as admin:
        assert admin.read_licence(uses)["uses"] == 3
        info = admin.read_licence(devices)
        assert info["devices"] == 2 and info["uses"] == 3 and info["not_after"] == "2999-01-01T00:00:00Z"


def test_answer_never_holds_the_key_in_clear_and_audit_records_releases(
    vault: VaultServer, key_name: str, tmp_path: Path
) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    name, psk = device(vault)
    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, devices=[name])
        start = admin.audit(limit=1000)[-1]["seq"]
    request = build_request(name, psk, sealed)
    answer = post(vault, request.body)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    key = sealed.recipient.data_key
    assert not any(form in answer.content for form in encodings(key))
    assert open_answer(request, name, sealed, answer.json()) == key
    # The answer opens only for the request it was made for (HPKE info binds the nonce).
    other = build_request(name, psk, sealed)
    with pytest.raises(InvalidTag):
        open_answer(other, name, sealed, answer.json())
    post(vault, build_request(name, bytes(32), sealed).body)

    with vault.client() as admin:
        events = [
            r["event"] for r in admin.audit(after=start, limit=1000) if r["event"]["op"] == "key.release"
        ]
    outcomes = [(e.get("device"), e["outcome"]) for e in events]
    assert (name, "released") in outcomes and (name, "bad_mac") in outcomes
    released = next(e for e in events if e["outcome"] == "released")
    assert released["key"] == key_name and len(released["data_key_hmac"]) == 64
    text = json.dumps(events).encode()
    for secret in (key, psk, request.nonce):
        assert not any(form in text for form in encodings(secret))
    with vault.client() as admin:
        assert admin.verify_audit()["records"] >= len(events)
