"""ONNX Runtime sessions from sealed models: same outputs as the plaintext model, nothing on disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelseal
from modelseal.runtimes import onnxruntime as sealed_ort

from .helpers import PlaintextScan, Recorder, TorchModels, need, tamper

ort = need("onnxruntime")


def _plain_session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class _Spy:
    """Wraps InferenceSession to keep what it was given (to check it was zeroized afterwards)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.models: list[Any] = []

    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        self.models.append(model)
        return self.real(model, *args, **kwargs)


def test_single_file_matches_plaintext_and_leaves_nothing(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    plaintext_scan: PlaintextScan,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sealed = tmp_path / "model.mseal"
    modelseal.seal(torch_models.onnx, sealed, mek=mek)
    spy = _Spy(ort.InferenceSession)
    monkeypatch.setattr(ort, "InferenceSession", spy)
    session = sealed_ort.load_session(sealed, identity, providers=["CPUExecutionProvider"])

    plain = _plain_session(torch_models.onnx)
    x = {"x": torch_models.inputs}
    np.testing.assert_allclose(session.run(None, x)[0], plain.run(None, x)[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(session.run(None, x)[0], torch_models.expected, rtol=1e-4, atol=1e-5)
    # ORT read a frozen memfd through /proc/self/fd (no plaintext file), closed once it was built.
    given = spy.models[0]
    assert isinstance(given, str) and given.startswith("/proc/self/fd/")
    fd = int(given.rsplit("/", 1)[1])
    with pytest.raises(OSError):
        os.fstat(fd)  # closed (unless the number was reused, which nothing here does)
    assert session._model_bytes is None and session._model_path is None
    plaintext_scan.assert_absent(torch_models.onnx.read_bytes(), torch_models.originals())


def test_external_data_folder_from_memory(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    plaintext_scan: PlaintextScan,
) -> None:
    folder = torch_models.onnx_external
    assert (folder / "model.onnx_data").stat().st_size > 10 * (folder / "model.onnx").stat().st_size
    sealed = tmp_path / "external.mseal"
    modelseal.seal(folder, sealed, mek=mek)
    session = sealed_ort.load_session(sealed, identity, providers=["CPUExecutionProvider"])
    plain = _plain_session(folder / "model.onnx")
    x = {"x": torch_models.inputs}
    # The plaintext mapping was zeroized when load_session returned: ORT must hold its own copy.
    np.testing.assert_allclose(session.run(None, x)[0], plain.run(None, x)[0], rtol=1e-6, atol=1e-6)
    plaintext_scan.assert_absent((folder / "model.onnx_data").read_bytes(), torch_models.originals())


def test_model_in_a_subfolder_with_other_files(
    tmp_path: Path, torch_models: TorchModels, identity: modelseal.MEK, mek: bytes
) -> None:
    src = tmp_path / "src"
    shutil.copytree(torch_models.onnx_external, src / "onnx")
    (src / "README.md").write_text("not a model")
    (src / "other.onnx").write_bytes(torch_models.onnx.read_bytes())
    sealed = tmp_path / "sub.mseal"
    modelseal.seal(src, sealed, mek=mek)
    with pytest.raises(modelseal.UsageError, match=r"holds 2 \.onnx files"):
        sealed_ort.load_session(sealed, identity)
    session = sealed_ort.load_session(sealed, identity, model="onnx/model.onnx")
    got = session.run(None, {"x": torch_models.inputs})[0]
    np.testing.assert_allclose(got, torch_models.expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(modelseal.UsageError, match="no file named"):
        sealed_ort.load_session(sealed, identity, model="missing.onnx")


def test_sklearn_model(tmp_path: Path, identity: modelseal.MEK, mek: bytes) -> None:
    need("sklearn")
    skl2onnx = need("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    features, labels = make_classification(n_samples=200, n_features=6, random_state=0)
    forest = RandomForestClassifier(n_estimators=12, random_state=0).fit(features, labels)
    proto = skl2onnx.convert_sklearn(forest, initial_types=[("input", FloatTensorType([None, 6]))])
    plain_path = tmp_path / "forest.onnx"
    plain_path.write_bytes(proto.SerializeToString())
    modelseal.seal(plain_path, tmp_path / "forest.mseal", mek=mek)

    session = sealed_ort.load_session(tmp_path / "forest.mseal", identity)
    batch = {"input": features[:20].astype(np.float32)}
    plain = _plain_session(plain_path).run(None, batch)
    got = session.run(None, batch)
    np.testing.assert_array_equal(got[0], plain[0])
    np.testing.assert_array_equal(got[0], forest.predict(features[:20]))


@pytest.mark.parametrize("what", ["single", "external"])
def test_tampered_model_never_reaches_the_runtime(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    sealed = tmp_path / "model.mseal"
    modelseal.seal(torch_models.onnx if what == "single" else torch_models.onnx_external, sealed, mek=mek)
    tamper(sealed)
    session, options = Recorder(), Recorder()
    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(ort, "SessionOptions", options)
    with pytest.raises(modelseal.IntegrityError):
        sealed_ort.load_session(sealed, identity)
    assert session.calls == [] and options.calls == []


def test_signed_model_and_no_rebuild(tmp_path: Path, torch_models: TorchModels, mek: bytes) -> None:
    owner = modelseal.generate_signer()
    sealed = tmp_path / "signed.mseal"
    modelseal.seal(torch_models.onnx, sealed, mek=mek, signer=owner)
    session = sealed_ort.load_session(sealed, modelseal.MEK(mek), signer=owner.public_key())
    with pytest.raises(modelseal.UsageError, match="cannot be rebuilt"):
        session.set_providers(["CPUExecutionProvider"])
    with pytest.raises(modelseal.SignatureError):
        sealed_ort.load_session(sealed, modelseal.MEK(mek), signer=modelseal.generate_signer().public_key())
