"""OpenVINO from sealed IR folders and ONNX files: outputs as the plaintext model's, weights shared."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelseal
from modelseal.runtimes import openvino as sealed_ov

from .helpers import PlaintextScan, Recorder, TorchModels, need, tamper

ov = need("openvino")

# This CPU defaults to bf16 inference: compare in f32.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _owner(obj: Any) -> modelseal.SealedModel:
    owner = obj._modelseal_plaintext
    assert isinstance(owner, modelseal.SealedModel)
    return owner


def test_ir_folder_matches_plaintext_and_shares_weights(
    tmp_path: Path,
    torch_models: TorchModels,
    ir_folder: Path,
    identity: modelseal.MEK,
    mek: bytes,
    plaintext_scan: PlaintextScan,
) -> None:
    sealed = tmp_path / "ir.mseal"
    modelseal.seal(ir_folder, sealed, mek=mek)
    compiled = sealed_ov.compile_model(sealed, identity, "CPU", F32)
    gc.collect()  # the intermediate ov.Model is gone: the CompiledModel alone keeps the weights
    plain = ov.Core().compile_model(str(ir_folder / "model.xml"), "CPU", F32)
    got = compiled([torch_models.inputs])[0]
    np.testing.assert_allclose(got, plain([torch_models.inputs])[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, torch_models.expected, rtol=1e-4, atol=1e-5)

    owner = _owner(compiled)
    assert not owner.closed  # OpenVINO reads the weights in place, so they must still be there
    closed = weakref.ref(owner)
    del owner, compiled
    gc.collect()
    assert closed() is None  # dropped (and zeroized by SealedModel.close) with the CompiledModel
    plaintext_scan.assert_absent((ir_folder / "model.bin").read_bytes(), torch_models.originals())


def test_read_model_keeps_plaintext_with_the_model(
    tmp_path: Path, torch_models: TorchModels, ir_folder: Path, identity: modelseal.MEK, mek: bytes
) -> None:
    sealed = tmp_path / "ir.mseal"
    modelseal.seal(ir_folder, sealed, mek=mek)
    core = ov.Core()
    model = sealed_ov.read_model(sealed, identity, core=core)
    gc.collect()
    assert not _owner(model).closed
    compiled = core.compile_model(model, "CPU", F32)
    got = compiled([torch_models.inputs])[0]
    np.testing.assert_allclose(got, torch_models.expected, rtol=1e-4, atol=1e-5)
    owner = weakref.ref(_owner(model))
    del model, compiled
    gc.collect()
    assert owner() is None


def test_onnx_file(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    plaintext_scan: PlaintextScan,
) -> None:
    sealed = tmp_path / "model.mseal"
    modelseal.seal(torch_models.onnx, sealed, mek=mek)
    compiled = sealed_ov.compile_model(sealed, identity, "CPU", F32)
    # OpenVINO parses ONNX into its own memory: the plaintext is already zeroized and gone.
    assert compiled._modelseal_plaintext is None
    plain = ov.Core().compile_model(str(torch_models.onnx), "CPU", F32)
    got = compiled([torch_models.inputs])[0]
    np.testing.assert_allclose(got, plain([torch_models.inputs])[0], rtol=1e-6, atol=1e-6)
    plaintext_scan.assert_absent(torch_models.onnx.read_bytes(), torch_models.originals())


def test_onnx_with_external_data_is_refused(
    tmp_path: Path, torch_models: TorchModels, identity: modelseal.MEK, mek: bytes
) -> None:
    sealed = tmp_path / "external.mseal"
    modelseal.seal(torch_models.onnx_external, sealed, mek=mek)
    with pytest.raises(modelseal.UsageError, match="external data"):
        sealed_ov.read_model(sealed, identity)


@pytest.mark.parametrize("what", ["ir", "onnx"])
def test_tampered_model_never_reaches_the_runtime(
    tmp_path: Path,
    torch_models: TorchModels,
    ir_folder: Path,
    identity: modelseal.MEK,
    mek: bytes,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    sealed = tmp_path / "model.mseal"
    modelseal.seal(ir_folder if what == "ir" else torch_models.onnx, sealed, mek=mek)
    tamper(sealed)
    core, tensor = Recorder(), Recorder()
    monkeypatch.setattr(ov, "Core", core)
    monkeypatch.setattr(ov, "Tensor", tensor)
    with pytest.raises(modelseal.IntegrityError):
        sealed_ov.compile_model(sealed, identity)
    assert core.calls == [] and tensor.calls == []
