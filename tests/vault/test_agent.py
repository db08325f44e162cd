"""The edge path: containers open models through the agent, which cannot read what it forwards."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import modelseal
from modelseal.vault.client import DeviceIdentity
from modelseal.vault.errors import PermissionDenied, Unavailable

from .agent_helpers import AgentProcess, agent_process, tapped_agent
from .conftest import VaultServer
from .release_helpers import Sealed, device, seal_model, unique


@pytest.fixture(scope="module")
def agent(vault: VaultServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with agent_process(vault.url, vault.ca, tmp_path_factory.mktemp("agent")) as running:
        yield running


def granted(vault: VaultServer, folder: Path, key_name: str) -> tuple[Sealed, str, bytes]:
    sealed = seal_model(vault, key_name, folder)
    name, psk = device(vault)
    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, devices=[name])
    return sealed, name, psk


def via(agent_address: str, name: str, psk: bytes) -> DeviceIdentity:
    return DeviceIdentity(agent_address, name, psk)


def agent_http(agent: AgentProcess) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(agent.socket)), base_url="http://agent")


def test_a_container_opens_a_model_through_the_agent(
    vault: VaultServer, agent: AgentProcess, tmp_path: Path, key_name: str
) -> None:
    sealed, name, psk = granted(vault, tmp_path, key_name)
    with modelseal.open(sealed.path, via(agent.address, name, psk)) as model:
        assert bytes(model.read()) == sealed.data
    with agent_http(agent) as c:
        health = c.get("/v1/agent/health").json()
    assert health["status"] == "ok" and health["vault"] == "reachable"
    lines = [json.loads(line) for line in agent.log.read_text().splitlines() if line.startswith("{")]
    forwards = [r for r in lines if r.get("event") == "forward" and r["path"] == "/v1/release"]
    assert forwards and forwards[-1]["status"] == 200 and name in forwards[-1]["caller"]


def test_the_agent_forwards_no_file_key_and_logs_no_secret(
    vault: VaultServer, tmp_path: Path, key_name: str
) -> None:
    sealed, name, psk = granted(vault, tmp_path, key_name)
    mek = sealed.recipient.data_key
    with tapped_agent(vault, tmp_path / "tap") as tapped:
        ident = via(tapped.address, name, psk)
        with modelseal.open(sealed.path, ident) as model:
            assert bytes(model.read()) == sealed.data
        assert ident.check_lease(key_name, 1)["valid"] is True
    seen = tapped.tap.everything() + tapped.log.getvalue().encode()
    assert b"/v1/release" in seen and b"/v1/lease" in seen  # the tap really saw the traffic
    for secret in (mek, psk):
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in seen


def test_a_replayed_release_request_is_refused(vault: VaultServer, tmp_path: Path, key_name: str) -> None:
    sealed, name, psk = granted(vault, tmp_path, key_name)
    with tapped_agent(vault, tmp_path / "tap") as tapped:
        with modelseal.open(sealed.path, via(tapped.address, name, psk)):
            pass
        release = next(s for s in tapped.tap.sent if b"/v1/release" in s.split(b"\n", 1)[0])
        body = release.rsplit(b"\n", 1)[1]
        transport = httpx.HTTPTransport(uds=tapped.address.removeprefix("unix:"))
        with httpx.Client(transport=transport, base_url="http://agent") as c:
            again = c.post("/v1/release", content=body, headers={"content-type": "application/json"})
    assert again.status_code == 403
    assert "sealed" not in again.json()


def test_wrong_psks_through_the_agent_stop_at_the_callers_own_budget(
    vault: VaultServer, agent: AgentProcess, tmp_path: Path, key_name: str
) -> None:
    """Three refused proofs for a device from one caller, and the agent stops forwarding that
    caller's requests for it (429, its own lockout), before the vault's (5, for everyone)."""
    sealed, name, psk = granted(vault, tmp_path, key_name)
    wrong = bytes(b ^ 0x5A for b in psk)
    for _ in range(3):
        with pytest.raises(PermissionDenied):
            modelseal.open(sealed.path, via(agent.address, name, wrong))
    with pytest.raises(Unavailable) as held:
        modelseal.open(sealed.path, via(agent.address, name, psk))  # this caller: the right PSK too
    assert held.value.code == "too_many_refusals" and held.value.status == 429
    with vault.client() as admin:
        assert admin.read_device(name)["locked"] is False  # the vault saw 3: not locked


def test_revocation_closes_an_open_model_at_the_next_lease_check(
    vault: VaultServer, agent: AgentProcess, tmp_path: Path, key_name: str
) -> None:
    sealed, name, psk = granted(vault, tmp_path, key_name)
    ident = via(agent.address, name, psk)
    model = modelseal.open(sealed.path, ident)
    keeper = modelseal.keep_lease(model, ident, modelseal.LeasePolicy(interval=0.2, grace=30))
    assert keeper is not None
    try:
        time.sleep(0.6)
        assert keeper.checks >= 1 and keeper.lost is None
        assert bytes(model.read()) == sealed.data
        with vault.client() as admin:
            admin.revoke_device(name)
        deadline = time.monotonic() + 10
        while keeper.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert keeper.lost is not None and name in keeper.lost
        assert model.closed and model.revoked == keeper.lost
        with pytest.raises(modelseal.LeaseLostError, match="lease ended"):
            model.read()
        with pytest.raises(PermissionDenied):
            modelseal.open(sealed.path, ident)  # and the next open fails
    finally:
        keeper.stop()
        model.close()


def test_models_download_through_the_agent_and_its_cache(
    vault: VaultServer, agent: AgentProcess, tmp_path: Path, key_name: str
) -> None:
    sealed, name, psk = granted(vault, tmp_path, key_name)
    model_id = unique("model")
    with vault.client() as admin:
        admin.upload_model(model_id, sealed.path)
    ident = via(agent.address, name, psk)
    out = tmp_path / "container" / f"{model_id}.mseal"
    out.parent.mkdir()
    first = ident.fetch_model(model_id, out)
    assert out.read_bytes() == sealed.path.read_bytes() and not first["not_modified"]
    out.unlink()
    ident.fetch_model(model_id, out)  # the container lost its copy: the agent serves its cache
    assert out.read_bytes() == sealed.path.read_bytes()
    again = ident.fetch_model(model_id, out)
    assert again["not_modified"]
    records = [json.loads(x) for x in agent.log.read_text().splitlines() if x.startswith("{")]
    content = [r for r in records if r.get("path", "").endswith(f"/{model_id}/content")]
    assert [r.get("cache") for r in content] == ["miss", "hit", "hit"]
    assert content[-1]["status"] == 304
    with modelseal.open(out, ident) as model:
        assert bytes(model.read()) == sealed.data
    # A cached copy is no way around revocation: the vault decides every download.
    with vault.client() as admin:
        admin.revoke_device(name)
    out.unlink()
    with pytest.raises(PermissionDenied):
        ident.fetch_model(model_id, out)
    assert not out.exists()


def test_a_stopped_vault_is_a_clear_error(make_vault: object, tmp_path: Path, key_name: str) -> None:
    from .conftest import stop_server

    assert callable(make_vault)
    own: VaultServer = make_vault()
    sealed, name, psk = granted(own, tmp_path, key_name)
    with agent_process(own.url, own.ca, tmp_path / "agent") as running:
        stop_server(own)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="cannot reach the vault"):
            modelseal.open(sealed.path, via(running.address, name, psk))
        assert time.monotonic() - started < 15
        with agent_http(running) as c:
            assert c.get("/v1/agent/health").json()["vault"] == "unreachable"


def test_the_agent_limits_rate_and_size_per_caller(vault: VaultServer, tmp_path: Path) -> None:
    with (
        agent_process(vault.url, vault.ca, tmp_path / "agent", "--rate", "1", "--burst", "2") as running,
        agent_http(running) as c,
    ):
        too_big = c.post("/v1/release", content=b"x" * (65 << 10))
        assert too_big.status_code == 413
        codes = [c.post("/v1/release", json={"device": "flooder"}).status_code for _ in range(4)]
        assert codes[:2] == [400, 400] and codes[2:] == [429, 429]
        limited = c.post("/v1/release", json={"device": "flooder"})
        assert int(limited.headers["retry-after"]) >= 1
        assert c.post("/v1/release", json={"device": "other"}).status_code == 400  # others still pass
        assert c.get("/v1/keys").status_code in (404, 405)  # nothing outside the allow-list


def test_a_runtime_session_refuses_use_once_the_lease_is_lost(
    vault: VaultServer, agent: AgentProcess, tmp_path: Path, key_name: str
) -> None:
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx", reason="needs the 'demo' extra")
    pytest.importorskip("onnxruntime", reason="needs the 'onnxruntime' extra")
    from onnx import TensorProto, helper

    from modelseal.runtimes.onnxruntime import load_session

    weights = np.arange(8, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])],
        [helper.make_tensor("w", TensorProto.FLOAT, [8], weights.tolist())],
    )
    plain = tmp_path / "add.onnx"
    plain.write_bytes(
        helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9
        ).SerializeToString()
    )
    onnx.checker.check_model(str(plain))
    sealed, name, psk = granted(vault, tmp_path, key_name)
    modelseal.seal(plain, sealed.path, [sealed.recipient], mek=sealed.recipient.data_key, overwrite=True)
    ident = via(agent.address, name, psk)
    session = modelseal.LeasedHandle(
        load_session(sealed.path, ident, providers=["CPUExecutionProvider"]),
        ident,
        modelseal.LeasePolicy(interval=0.2, grace=30),
    )
    x = np.ones(8, dtype=np.float32)
    assert np.array_equal(session.run(None, {"x": x})[0], x + weights)
    with vault.client() as admin:
        admin.revoke_device(name)
    deadline = time.monotonic() + 10
    while session.lease_lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(modelseal.LeaseLostError, match="lease ended"):
        session.run(None, {"x": x})
    session.close()


def test_a_stopped_vault_mounts_nothing(make_vault: object, tmp_path: Path, key_name: str) -> None:
    """cfs mount/run through the agent with the vault gone: exit 15, one line, no mount, no child."""
    import os
    import subprocess
    import sys

    from modelseal import cfs

    from .conftest import stop_server

    assert callable(make_vault)
    own: VaultServer = make_vault()
    sealed, name, psk = granted(own, tmp_path, key_name)
    psk_file = tmp_path / "dev.psk"
    psk_file.write_text(f"# device: {name}\n{psk.hex()}\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    marker = tmp_path / "child-ran"
    with agent_process(own.url, own.ca, tmp_path / "agent") as running:
        stop_server(own)
        device_args = ["--agent", running.address, "--psk-file", str(psk_file)]
        base = [sys.executable, "-m", "modelseal", "cfs"]
        run = subprocess.run(
            [*base, "run", str(sealed.path), *device_args, "--", "touch", str(marker)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 15, run.stderr
        assert "cannot reach the vault" in run.stderr and "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and not marker.exists()
        if cfs.fuse_unavailable() is not None and os.environ.get("CI") != "true":
            pytest.skip(f"FUSE: {cfs.fuse_unavailable()}")
        mount = subprocess.run(
            [*base, "mount", str(sealed.path), "--at", str(mnt), *device_args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert mount.returncode == 15, mount.stderr
        assert "cannot reach the vault" in mount.stderr and not os.path.ismount(mnt)


ATTACKER = """
import sys
from modelseal.vault.client import DeviceIdentity
from modelseal.vault.errors import KeyServiceError
address, device, wrapped_hex = sys.argv[1:4]
codes = []
for _ in range(6):
    try:
        DeviceIdentity(address, device, bytes(32), retry_for=0).release("k", 1, bytes.fromhex(wrapped_hex))
        codes.append(200)
    except KeyServiceError as e:
        codes.append(e.status)
print(" ".join(map(str, codes)))
"""


@pytest.mark.faults
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a second pid namespace (another container) needs root and unshare (util-linux)",
)
def test_another_container_cannot_lock_a_device_out_through_the_agent(
    vault: VaultServer, agent: AgentProcess, tmp_path: Path, key_name: str
) -> None:
    """A container guessing another's PSK through the agent spends its own budget (3 refusals per
    device, keyed by the kernel's word for who connected: uid and pid namespace), not the device's
    (the vault locks a device after 5). Before, the agent keyed callers by the device name they
    claimed, so 5 bad MACs claiming the device locked it out for everyone."""
    sealed, name, psk = granted(vault, tmp_path, key_name)
    wrapped = sealed.recipient.wrapped.hex()
    # Another container: its own pid namespace (`unshare`), same uid, same agent socket.
    attacker = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", ATTACKER, agent.address, name, wrapped],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert attacker.returncode == 0, attacker.stderr
    assert attacker.stdout.split() == ["403", "403", "403", "429", "429", "429"], attacker.stdout
    with modelseal.open(sealed.path, via(agent.address, name, psk)) as model:  # not locked out
        assert bytes(model.read()) == sealed.data
