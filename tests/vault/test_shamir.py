"""The Shamir root: shares written once, a vault that starts sealed, unseal by any K of N shares.

The in-process tests drive ShamirBarrier directly (every 3-of-5 subset, forged and foreign shares,
wiping, rate limit); the end-to-end test runs the real `modelseal vault init/serve/unseal` with TLS
on a free loopback port and checks every kind of route answers 503 with Retry-After while sealed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from modelseal.errors import OutputError, UsageError
from modelseal.vault.client import VaultClient, read_token_file
from modelseal.vault.errors import KeyServiceError
from modelseal.vault.server import datadir
from modelseal.vault.server.barrier import ROOT_KEY_SIZE
from modelseal.vault.server.roots.shamir import (
    ShamirBarrier,
    ShamirOptions,
    ShareError,
    UnsealRateLimit,
    UnsealRateLimited,
    combine_root,
    format_share,
    parse_share,
    split_root,
)

from .conftest import VaultServer, serve_process, stop_server

pytest.importorskip("Crypto.Protocol.SecretSharing", reason="pycryptodome not installed (extra: vault)")


def new_shamir_vault(folder: Path, shares: int = 5, threshold: int = 3) -> tuple[Path, list[str]]:
    data, share_dir = folder / "vault", folder / "shares"
    datadir.init(data, "shamir", shamir=ShamirOptions(shares, threshold, share_dir))
    texts = [(share_dir / f"share-{i}.txt").read_text() for i in range(1, shares + 1)]
    return data, texts


def fresh_barrier(data: Path) -> ShamirBarrier:
    barrier = datadir.DataDir(data).barrier()
    assert isinstance(barrier, ShamirBarrier) and barrier.sealed
    return barrier


@pytest.fixture(scope="module")
def vault5of3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    return new_shamir_vault(tmp_path_factory.mktemp("shamir"))


# --- the sharing itself ---------------------------------------------------------------------------


def test_split_and_combine_use_every_byte_of_the_root() -> None:
    root = os.urandom(ROOT_KEY_SIZE)
    values = split_root(root, 5, 3)
    assert len(values) == 5 and all(len(v) == ROOT_KEY_SIZE for v in values)
    for subset in itertools.combinations(range(5), 3):
        assert bytes(combine_root([(i + 1, values[i]) for i in subset])) == root
    # Two shares interpolate a line, not the secret polynomial: some other 32 bytes come out.
    assert bytes(combine_root([(1, values[0]), (2, values[1])])) != root


def test_any_three_of_five_unseal_and_open_the_same_secrets(vault5of3: tuple[Path, list[str]]) -> None:
    data, shares = vault5of3
    first = fresh_barrier(data)
    for text in shares[:3]:
        first.submit_share(text)
    blob = first.encrypt(b"master key material", table="t", row="r", purpose="p")
    for subset in itertools.permutations(range(5), 3):
        barrier = fresh_barrier(data)
        answers = [barrier.submit_share(shares[i]) for i in subset]
        assert answers == [
            {"sealed": True, "progress": 1, "threshold": 3},
            {"sealed": True, "progress": 2, "threshold": 3},
            {"sealed": False},
        ], subset
        assert barrier.decrypt(blob, table="t", row="r", purpose="p") == b"master key material"


def test_the_same_share_twice_counts_once(vault5of3: tuple[Path, list[str]]) -> None:
    data, shares = vault5of3
    barrier = fresh_barrier(data)
    barrier.submit_share(shares[0])
    assert barrier.submit_share(" " + shares[0].strip() + "\n")["progress"] == 1
    assert barrier.submit_share(shares[1]) == {"sealed": True, "progress": 2, "threshold": 3}
    assert barrier.sealed


def test_a_share_of_another_vault_is_refused(vault5of3: tuple[Path, list[str]], tmp_path: Path) -> None:
    data, shares = vault5of3
    _, foreign = new_shamir_vault(tmp_path)
    barrier = fresh_barrier(data)
    barrier.submit_share(shares[0])
    with pytest.raises(ShareError, match="belongs to another vault"):
        barrier.submit_share(foreign[1])
    assert barrier.unseal_status() == {"sealed": True, "progress": 1, "threshold": 3}


def test_corrupted_and_malformed_shares_are_refused(vault5of3: tuple[Path, list[str]]) -> None:
    data, shares = vault5of3
    text = shares[0].strip()
    value_at = len(text) - 20  # a hex digit inside the value
    flipped = text[:value_at] + ("0" if text[value_at] != "0" else "1") + text[value_at + 1 :]
    barrier = fresh_barrier(data)
    with pytest.raises(ShareError, match="corrupted"):
        barrier.submit_share(flipped)
    with pytest.raises(ShareError, match="unsupported share version"):
        barrier.submit_share(text.replace("msvault1:", "msvault2:", 1))
    for bad in ("", "hello", text[:-1], text + "0", "x" * 10_000, text.replace(":", ";")):
        with pytest.raises(ShareError):
            barrier.submit_share(bad)
    assert barrier.unseal_status()["progress"] == 0


def test_a_forged_share_is_refused_on_its_own_and_progress_stays(vault5of3: tuple[Path, list[str]]) -> None:
    """A share with a valid checksum but a wrong value is not one of this vault's (vault.json keeps
    each share's digest): refused alone, counted against its sender, other progress untouched."""
    data, shares = vault5of3
    real = parse_share(shares[2])
    forged = format_share(real.vault_id, real.threshold, real.index, os.urandom(ROOT_KEY_SIZE))
    barrier = fresh_barrier(data)
    barrier.submit_share(shares[0], "operator-a")
    barrier.submit_share(shares[1], "operator-b")
    with pytest.raises(ShareError, match="not share number 3 of this vault"):
        barrier.submit_share(forged, "intruder")
    assert barrier.sealed and barrier.unseal_status()["progress"] == 2
    barrier.submit_share(shares[2], "operator-c")
    assert not barrier.sealed


@pytest.mark.faults
def test_a_flood_of_bogus_shares_cannot_keep_the_vault_sealed(vault5of3: tuple[Path, list[str]]) -> None:
    """Before, the unseal budget (30 a minute) was global and spent before a share was even parsed,
    and a well-formed bogus share reset everyone's progress: anyone could keep a Shamir vault sealed."""
    data, shares = vault5of3
    real = parse_share(shares[0])
    barrier = fresh_barrier(data)
    refused = limited = 0
    for i in range(200):
        bogus = format_share(real.vault_id, real.threshold, 1 + i % 5, os.urandom(ROOT_KEY_SIZE))
        try:
            barrier.submit_share(bogus, "intruder")
        except UnsealRateLimited:
            limited += 1
        except ShareError:
            refused += 1
        if i == 50:
            barrier.submit_share(shares[0], "operator")  # arrives in the middle of the flood
    assert refused == 30 and limited == 170  # the intruder's own budget, and nobody else's
    for text in shares[1:3]:
        barrier.submit_share(text, "operator")
    assert not barrier.sealed


def test_a_vault_without_share_digests_still_checks_the_reconstructed_root(
    vault5of3: tuple[Path, list[str]],
) -> None:
    """A vault made before share digests: a forged share is found at the threshold (key check)."""
    data, shares = vault5of3
    config = json.loads((data / "vault.json").read_text())
    section = {k: v for k, v in config["shamir"].items() if k != "share_digests"}
    legacy = ShamirBarrier.from_config(config["vault_id"], section)
    real = parse_share(shares[2])
    forged = format_share(real.vault_id, real.threshold, real.index, os.urandom(ROOT_KEY_SIZE))
    legacy.submit_share(shares[0])
    legacy.submit_share(shares[1])
    with pytest.raises(KeyServiceError, match="do not reconstruct this vault's root key") as refused:
        legacy.submit_share(forged)
    assert refused.value.code == "shares_mismatch" and legacy.sealed


def test_a_different_share_with_a_taken_index_is_refused(vault5of3: tuple[Path, list[str]]) -> None:
    data, shares = vault5of3
    real = parse_share(shares[0])
    other = format_share(real.vault_id, real.threshold, real.index, os.urandom(ROOT_KEY_SIZE))
    barrier = fresh_barrier(data)
    barrier.submit_share(shares[0])
    with pytest.raises(ShareError, match="not share number 1 of this vault"):
        barrier.submit_share(other)
    assert barrier.unseal_status()["progress"] == 1


def test_pending_shares_are_wiped_on_seal_and_after_reconstruction(
    vault5of3: tuple[Path, list[str]],
) -> None:
    data, shares = vault5of3
    barrier = fresh_barrier(data)
    barrier.submit_share(shares[0])
    held = list(barrier._pending.values())
    assert held and all(any(v) for v in held)
    barrier.seal()
    assert all(not any(v) for v in held) and barrier.unseal_status()["progress"] == 0

    barrier.submit_share(shares[3])
    barrier.submit_share(shares[4])
    held = list(barrier._pending.values())
    barrier.submit_share(shares[1])
    assert not barrier.sealed
    assert len(held) == 2 and all(not any(v) for v in held) and not barrier._pending


def test_seal_then_unseal_again(vault5of3: tuple[Path, list[str]]) -> None:
    data, shares = vault5of3
    barrier = fresh_barrier(data)
    for text in shares[:3]:
        barrier.submit_share(text)
    blob = barrier.encrypt(b"x", table="t", row="r", purpose="p")
    barrier.seal()
    assert barrier.sealed
    for text in shares[2:]:
        barrier.submit_share(text)
    assert barrier.decrypt(blob, table="t", row="r", purpose="p") == b"x"
    # Once unsealed a further share changes nothing.
    assert barrier.submit_share(shares[0]) == {"sealed": False}


def test_rate_limit_window() -> None:
    limit = UnsealRateLimit(attempts=3, window=60)
    for t in (0.0, 1.0, 2.0):
        limit.take(now=t)
    with pytest.raises(UnsealRateLimited) as refused:
        limit.take(now=3.0)
    assert refused.value.retry_after == 57 and refused.value.status == 429
    limit.take(now=60.5)  # the attempt at t=0 left the window


def test_threshold_bounds() -> None:
    for shares, threshold in ((5, 1), (3, 5), (300, 3), (0, 0)):
        with pytest.raises(UsageError):
            ShamirOptions(shares, threshold, Path("unused")).check()


# --- init -------------------------------------------------------------------------------------------


def test_init_writes_shares_once_and_no_root(tmp_path: Path) -> None:
    data, shares = new_shamir_vault(tmp_path, shares=4, threshold=2)
    share_dir = tmp_path / "shares"
    assert sorted(p.name for p in share_dir.iterdir()) == [f"share-{i}.txt" for i in range(1, 5)]
    for i, text in enumerate(shares, start=1):
        assert (share_dir / f"share-{i}.txt").stat().st_mode & 0o777 == 0o600
        assert text.count("\n") == 1 and parse_share(text).index == i
    assert not (data / datadir.ROOT_FILE).exists()
    config = json.loads((data / "vault.json").read_text())
    assert config["root"] == "shamir" and config["shamir"]["threshold"] == 2
    # No share value and no root anywhere in the data folder.
    barrier = fresh_barrier(data)
    values = [parse_share(t).value.hex() for t in shares]
    for text in shares[:2]:
        barrier.submit_share(text)
    everything = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    for value in values:
        assert value.encode() not in everything and bytes.fromhex(value) not in everything

    # A second init into the same share folder refuses before it creates anything.
    with pytest.raises(OutputError, match="refusing to overwrite shares"):
        datadir.init(tmp_path / "other", "shamir", shamir=ShamirOptions(3, 2, share_dir))
    assert not (tmp_path / "other" / "vault.json").exists()
    assert (share_dir / "share-1.txt").read_text() == shares[0]


def test_root_flags_must_match_the_root(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        datadir.init(tmp_path / "a", "shamir")
    with pytest.raises(UsageError):
        datadir.init(tmp_path / "b", "key-file", shamir=ShamirOptions(3, 2, tmp_path / "s"))


def test_a_key_file_vault_has_nothing_to_unseal(make_vault: Callable[[], VaultServer]) -> None:
    server = make_vault()
    with VaultClient(server.url, ca=server.ca) as anonymous:
        assert anonymous.unseal("anything") == {"sealed": False}
        with server.client() as admin:
            admin.seal_vault()
        with pytest.raises(KeyServiceError, match="not Shamir shares: restart it") as refused:
            anonymous.unseal("anything")
        assert refused.value.code == "not_unsealable"
        assert anonymous.seal_status() == {"sealed": True}


# --- end to end: init, serve sealed, unseal over TLS, seal, restart -----------------------------------


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelseal", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        start_new_session=True,  # no controlling terminal: getpass reads the share from stdin
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def sealed_routes(server: VaultServer, token: str) -> list[httpx.Response]:
    """One request per kind of route; with a valid admin token, so only the seal can refuse."""
    context = ssl.create_default_context(cafile=str(server.ca))
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, verify=context, headers=auth, timeout=10) as http:
        return [
            http.get("/v1/keys"),
            http.post("/v1/keys/k-sealed", json={"type": "aes256-gcm"}),
            http.get("/v1/keys/k-sealed"),
            http.post("/v1/keys/k-sealed/datakey"),
            http.post("/v1/keys/k-sealed/unwrap", json={"key_version": 1, "wrapped": "AAAA"}),
            http.post("/v1/tokens", json={"role": "operator"}),
            http.get("/v1/devices"),
            http.post("/v1/devices/d1", json={}),
            http.get("/v1/policies"),
            http.get("/v1/audit"),
            http.post("/v1/release", content=b"{}"),
            http.get("/v1/models"),
            http.post("/v1/sys/seal"),
        ]


def assert_sealed(server: VaultServer, token: str) -> None:
    for response in sealed_routes(server, token):
        where = f"{response.request.method} {response.request.url.path}"
        assert response.status_code == 503, where
        assert int(response.headers["retry-after"]) > 0, where
        assert response.json()["error"]["code"] == "sealed", where
    with server.client() as client:
        assert client.health() == {"status": "ok"}
        assert client.seal_status()["sealed"] is True
    ready = httpx.get(f"{server.url}/v1/sys/ready", verify=ssl.create_default_context(cafile=str(server.ca)))
    assert ready.status_code == 503 and "retry-after" in ready.headers


def test_sealed_start_unseal_seal_and_restart(tmp_path: Path) -> None:
    data, share_dir = tmp_path / "vault", tmp_path / "shares"
    init = cli(
        "vault", "init", "--data", str(data), "--root", "shamir",
        "--shares", "5", "--threshold", "3", "--share-dir", str(share_dir),
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    shares = [(share_dir / f"share-{i}.txt").read_text().strip() for i in range(1, 6)]
    values = [parse_share(s).value.hex() for s in shares]
    for text in shares + values:
        assert text not in init.stdout and text not in init.stderr
    token = init.stdout.strip()
    assert token == read_token_file(data / datadir.TOKEN_FILE)
    _, foreign = new_shamir_vault(tmp_path / "other")
    (tmp_path / "foreign.txt").write_text(foreign[0])
    corrupted = shares[1][:-1] + ("0" if shares[1][-1] != "0" else "1")
    (tmp_path / "corrupted.txt").write_text(corrupted + "\n")

    server = serve_process(data, tmp_path / "server.log")
    try:
        assert_sealed(server, token)
        flags = ["--vault", server.url, "--ca", str(server.ca)]
        for i, expected in ((1, 1), (2, 2)):
            step = cli("vault", "unseal", *flags, "--share-file", str(share_dir / f"share-{i}.txt"))
            assert step.returncode == 0, step.stderr
            assert json.loads(step.stdout) == {"sealed": True, "progress": expected, "threshold": 3}
        assert_sealed(server, token)

        refused = cli("vault", "unseal", *flags, "--share-file", str(tmp_path / "foreign.txt"))
        assert refused.returncode == 12 and "belongs to another vault" in refused.stderr
        assert "Traceback" not in refused.stderr
        refused = cli("vault", "unseal", *flags, "--share-file", str(tmp_path / "corrupted.txt"))
        assert refused.returncode == 12 and "corrupted" in refused.stderr
        with VaultClient(server.url, ca=server.ca) as anonymous:
            with pytest.raises(KeyServiceError, match="corrupted") as bad:
                anonymous.unseal(corrupted)
            assert bad.value.status == 400
            assert anonymous.seal_status() == {"sealed": True, "progress": 2, "threshold": 3}

        # The third share through the prompt (getpass reads stdin when there is no terminal).
        last = cli("vault", "unseal", *flags, stdin=shares[2] + "\n")
        assert last.returncode == 0, last.stderr
        assert json.loads(last.stdout) == {"sealed": False}

        with server.client() as admin:
            assert admin.ready()["status"] == "ready"
            admin.create_key("after-unseal")
            unseals = [r["event"] for r in admin.audit(limit=1000) if r["event"]["op"] == "sys.unseal"]
            assert len(unseals) == 1 and unseals[0]["actor"] == "shares"
            first = admin.datakey("after-unseal", plaintext=True)
            admin.seal_vault()
        assert_sealed(server, token)

        # Sealed again: another three shares, in another order, bring the same root back.
        with VaultClient(server.url, ca=server.ca) as anonymous:
            for text in (shares[4], shares[3]):
                assert anonymous.unseal(text)["sealed"] is True
            assert anonymous.unseal(shares[1]) == {"sealed": False}
        with server.client() as admin:
            assert admin.unwrap("after-unseal", first.key_version, first.wrapped) == first.plaintext
    finally:
        stop_server(server)

    # A restart forgets the root: sealed again until the shares come back.
    server = serve_process(data, tmp_path / "server.log")
    try:
        assert_sealed(server, token)
        # Unseal needs no token but is rate-limited: a flood of foreign shares meets 429.
        context = ssl.create_default_context(cafile=str(server.ca))
        with httpx.Client(base_url=server.url, verify=context, timeout=10) as http:
            statuses = []
            for _ in range(40):
                response = http.post("/v1/sys/unseal", json={"share": foreign[1].strip()})
                statuses.append(response.status_code)
                if response.status_code == 429:
                    assert int(response.headers["retry-after"]) > 0
                    break
            assert statuses[0] == 400 and statuses[-1] == 429
    finally:
        stop_server(server)

    log = server.log.read_bytes()
    for text, value in zip(shares, values, strict=True):
        for needle in (text.encode(), value.encode(), base64.b64encode(bytes.fromhex(value))):
            assert needle not in log
    assert b"/v1/sys/unseal" in log
