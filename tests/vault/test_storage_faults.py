"""The vault's storage misbehaves under a running `vault serve`: the WAL deleted, a read-only data
folder, a full disk. Each must end in a clean refusal (the documented error body, readiness 503,
one log line), never a signal death or a bare 500, and never lose an acknowledged write.

The full-disk and read-only cases mount a small tmpfs or a read-only bind mount: they need root
(as CI has); elsewhere they skip saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelseal.vault.errors import Unavailable

from .conftest import VaultServer, serve_process, start_server, stop_server, tls_context

pytestmark = pytest.mark.faults

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or a read-only bind needs root")


def ready(server: VaultServer) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/sys/ready", verify=tls_context(server), timeout=10)


def log_errors(server: VaultServer) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    return [r for r in lines if r.get("level") == "error"]


def test_deleting_the_wal_under_a_running_vault_loses_no_acknowledged_write(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        with server.client() as admin:
            acknowledged = [admin.create_key(f"k{i}")["name"] for i in range(40)]
        wal = server.data / "vault.db-wal"
        assert wal.exists() and not (server.data / "vault.db-shm").exists()  # no mapped index
        wal.unlink()
        with server.client() as admin, pytest.raises(Unavailable) as refused:
            admin.create_key("after")
        assert refused.value.code == "storage_lost" and "vault.db-wal was deleted" in str(refused.value)
        answer = ready(server)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "storage_lost"
        errors = log_errors(server)
        assert any("refusing writes" in str(e.get("message", "")) for e in errors), errors
        assert server.process.poll() is None  # refusing, not dead (every audited call is a write)
    finally:
        stop_server(server)
    restarted = serve_process(server.data, tmp_path / "restart.log")
    try:
        with restarted.client() as admin:
            keys = set(admin.list_keys())
            assert set(acknowledged) <= keys and "after" not in keys
            assert admin.verify_audit()["records"] >= 1 + len(acknowledged)
            admin.create_key("writes-again")  # a fresh WAL
    finally:
        stop_server(restarted)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@needs_root
def test_a_full_disk_is_refused_cleanly_and_the_vault_recovers(tmpfs: Path) -> None:
    server = start_server(tmpfs)
    try:
        with server.client() as admin:
            admin.create_key("before")
        filler = tmpfs / "filler"
        with open(filler, "wb") as f:  # every free block
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        answer = ready(server)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "storage_full", answer.text
        context = tls_context(server)
        token = server.admin_token_file.read_text().strip()
        refused = 0
        for i in range(20):  # some may still fit in free pages; none may answer a bare 500
            r = httpx.post(
                f"{server.url}/v1/keys/full{i}", json={"type": "aes256-gcm"}, verify=context, timeout=10,
                headers={"Authorization": f"Bearer {token}"},
            )  # fmt: skip
            assert r.headers.get("content-type") == "application/json", (r.status_code, r.text[:300])
            body = r.json()
            assert r.status_code in (200, 503), (r.status_code, body)
            if r.status_code == 503:
                refused += 1
                assert body["error"]["code"] in ("storage_full", "storage_unavailable"), body
                assert "sqlalche.me" not in r.text and "Traceback" not in r.text
        assert refused > 0
        assert server.process.poll() is None
        filler.unlink()
        assert ready(server).status_code == 200
        with server.client() as admin:
            admin.create_key("after")
            assert {"before", "after"} <= set(admin.list_keys())
    finally:
        stop_server(server)


@needs_root
def test_a_read_only_data_folder_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    stop_server(server)
    view = tmp_path / "ro"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(server.data), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        done = subprocess.run(
            [sys.executable, "-m", "modelseal", "vault", "serve", "--data", str(view),
             "--listen", "127.0.0.1:1"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
    assert done.returncode == Unavailable.exit_code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "read-only filesystem" in lines[0], done.stderr
    assert done.returncode > 0  # not a signal death


def test_the_cli_verifies_a_copy_while_the_vault_holds_its_file(tmp_path: Path) -> None:
    """What an operator does to check a live SQLite vault offline: copy the folder, verify the copy."""
    server = start_server(tmp_path)
    try:
        with server.client() as admin:
            admin.create_key("k")
        copy = tmp_path / "copy"
        shutil.copytree(server.data, copy, ignore=shutil.ignore_patterns("*.lock"))
    finally:
        stop_server(server)
    done = subprocess.run(
        [sys.executable, "-m", "modelseal", "vault", "audit", "verify", "--data", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "audit chain intact" in done.stderr, done.stderr
