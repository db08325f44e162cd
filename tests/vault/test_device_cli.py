"""A device end to end: `seal --vault-key`, `vault device|policy|licence`, unseal/verify as a device,
the ONNX Runtime loader with a DeviceIdentity, and the PSK kept off stdout, stderr and argv."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from modelseal.cli.main import main
from modelseal.errors import KeyFileError
from modelseal.vault.client import DeviceIdentity, load_psk

from .conftest import VaultServer
from .release_helpers import unique


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tiny_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    weights = helper.make_tensor("w", onnx.TensorProto.FLOAT, [3, 2], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_device_end_to_end_over_the_cli(
    vault: VaultServer,
    key_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSEAL_VAULT_ADDR", vault.url)
    monkeypatch.setenv("MODELSEAL_VAULT_TOKEN_FILE", str(vault.admin_token_file))
    monkeypatch.setenv("MODELSEAL_VAULT_CA", str(vault.ca))
    assert run(capsys, "vault", "key", "create", key_name)[0] == 0
    model = tmp_path / "tiny.onnx"
    tiny_onnx(model)
    sealed = tmp_path / "tiny.mseal"
    assert run(capsys, "seal", str(model), "-o", str(sealed), "--vault-key", key_name)[0] == 0

    name, group = unique("cam"), unique("edge")
    psk_file = tmp_path / "cam.psk"
    code, out, err = run(
        capsys, "vault", "device", "create", name, "--group", group, "--psk-out", str(psk_file)
    )
    assert code == 0 and psk_file.stat().st_mode & 0o777 == 0o600
    psk = load_psk(psk_file)
    assert psk.hex() not in out + err and json.loads(out)["groups"] == [group]
    assert run(capsys, "vault", "device", "create", name, "--psk-out", str(tmp_path / "x"))[0] == 12
    code, out, _ = run(capsys, "vault", "device", "list")
    assert name in json.loads(out)["devices"]
    code, out, _ = run(capsys, "vault", "device", "read", name)
    assert json.loads(out)["psk_generation"] == 1 and psk.hex() not in out

    # Without a policy the device gets nothing (exit 13: permission denied).
    unseal_as_device = (
        "unseal",
        str(sealed),
        "--vault",
        vault.url,
        "--vault-ca",
        str(vault.ca),
        "--device",
        name,
        "--psk-file",
        str(psk_file),
    )
    code, _, err = run(capsys, *unseal_as_device, "-o", str(tmp_path / "denied.onnx"))
    assert code == 13 and "key release refused" in err and psk.hex() not in err
    assert not (tmp_path / "denied.onnx").exists()

    assert run(capsys, "vault", "policy", "create", unique("p"), "--key", key_name)[0] == 2  # nobody named
    policy = unique("p")
    code, out, _ = run(capsys, "vault", "policy", "create", policy, "--key", key_name, "--group", group)
    assert code == 0 and json.loads(out)["groups"] == [group]
    code, out, _ = run(capsys, "vault", "policy", "list")
    assert policy in json.loads(out)["policies"]
    licence = unique("l")
    code, out, _ = run(
        capsys,
        "vault",
        "licence",
        "create",
        licence,
        "--policy",
        policy,
        "--not-after",
        "2999-12-31T23:59:59Z",
        "--max-uses",
        "10",
        "--max-devices",
        "1",
    )
    assert code == 0 and json.loads(out)["max_devices"] == 1

    monkeypatch.delenv("MODELSEAL_VAULT_TOKEN_FILE")  # a device holds no token
    code, _, err = run(capsys, *unseal_as_device, "-o", str(tmp_path / "out.onnx"))
    assert code == 0, err
    assert (tmp_path / "out.onnx").read_bytes() == model.read_bytes()
    verify = ("verify", *unseal_as_device[1:])
    assert run(capsys, *verify)[0] == 0

    # The runtime loaders take the same identity: same outputs as the plaintext model.
    ort = pytest.importorskip("onnxruntime")
    from modelseal.runtimes import onnxruntime as sealed_ort

    identity = DeviceIdentity(vault.url, name, psk, ca=vault.ca)
    assert psk.hex() not in repr(identity) and str(psk) not in repr(identity)
    session = sealed_ort.load_session(sealed, identity, providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = {"x": np.array([[1.0, 2.0, 3.0]], dtype=np.float32)}
    np.testing.assert_allclose(session.run(None, x)[0], plain.run(None, x)[0])
    code, out, _ = run(
        capsys, "vault", "licence", "read", licence, "--token-file", str(vault.admin_token_file)
    )
    assert json.loads(out)["uses"] == 3 and json.loads(out)["devices"] == 1

    # Rotation over the CLI: `--psk-out -` is the only way the PSK reaches stdout, alone on it.
    monkeypatch.setenv("MODELSEAL_VAULT_TOKEN_FILE", str(vault.admin_token_file))
    code, out, err = run(capsys, "vault", "device", "rotate-psk", name, "--psk-out", "-")
    assert code == 0 and len(out.strip()) == 64 and json.loads(err)["psk_generation"] == 2
    new_psk_file = tmp_path / "new.psk"
    new_psk_file.write_bytes(bytes.fromhex(out.strip()))  # raw 32 bytes also load
    code, _, err = run(capsys, *verify)
    assert code == 13 and "key release refused" in err  # the old PSK file no longer works
    assert run(capsys, *verify[:-1], str(new_psk_file))[0] == 0

    code, out, _ = run(capsys, "vault", "device", "revoke", name)
    assert code == 0 and json.loads(out)["revoked"] is True
    assert run(capsys, *verify[:-1], str(new_psk_file))[0] == 13
    code, _, err = run(capsys, "verify", str(sealed), "--vault", vault.url, "--device", name)
    assert code == 2 and "--psk-file" in err


def test_load_psk(tmp_path: Path) -> None:
    psk = os.urandom(32)
    (tmp_path / "raw").write_bytes(psk)
    (tmp_path / "hex").write_text(psk.hex() + "\n")
    (tmp_path / "HEX").write_text(psk.hex().upper())
    assert {load_psk(tmp_path / n) for n in ("raw", "hex", "HEX")} == {psk}
    (tmp_path / "short").write_bytes(psk[:31])
    (tmp_path / "nothex").write_text("zz" * 32)
    for name in ("short", "nothex", "absent"):
        with pytest.raises(KeyFileError) as e:
            load_psk(tmp_path / name)
        assert psk.hex() not in str(e.value)
    with pytest.raises(KeyFileError):
        DeviceIdentity("https://127.0.0.1:9", "d", psk[:16])
