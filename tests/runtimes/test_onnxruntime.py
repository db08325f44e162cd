"""ONNX Runtime sessions from sealed models: same outputs as the plaintext model, nothing on disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelseal
from modelseal import memfd
from modelseal.memory import zero_fill
from modelseal.runtimes import onnxruntime as sealed_ort

from .helpers import PlaintextScan, Recorder, TorchModels, need, tamper

ort = need("onnxruntime")


def _plain_session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _join_zeroizers() -> None:
    """Wait until load_session's helper threads have zeroized and freed every plaintext."""
    for thread in threading.enumerate():
        if thread.name == sealed_ort.ZEROIZE_THREAD:
            thread.join()


class _Sinks:
    """Records the loader's MemfdSinks and checks each one is all zeros right after its zeroize."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[memfd.MemfdSink] = []
        self.zeroized: list[int] = []
        real_sink = memfd.MemfdSink

        def make(name: str, size: int) -> memfd.MemfdSink:
            self.made.append(real_sink(name, size))
            return self.made[-1]

        def fill(mapping: Any) -> None:
            zero_fill(mapping)
            assert mapping[:] == bytes(len(mapping))
            self.zeroized.append(len(mapping))

        monkeypatch.setattr(sealed_ort, "MemfdSink", make)
        monkeypatch.setattr(memfd, "zero_fill", fill)


def _ort_format(source: Path, target: Path) -> Path:
    """``source`` converted to ORT format by ORT itself (basic optimizations, as its converter does)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    assert target.read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier
    return target


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
    sinks = _Sinks(monkeypatch)
    session = sealed_ort.load_session(sealed, identity, providers=["CPUExecutionProvider"])
    _join_zeroizers()  # the session must not need the memfd once it is zeroized and freed
    size = torch_models.onnx.stat().st_size
    assert [s.closed for s in sinks.made] == [True] and sinks.zeroized == [size]

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
    _join_zeroizers()
    plain = _plain_session(folder / "model.onnx")
    x = {"x": torch_models.inputs}
    # The plaintext mapping was zeroized after load_session: ORT must hold its own copy.
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


@pytest.mark.parametrize("what", ["single", "external", "ort"])
def test_tampered_model_never_reaches_the_runtime(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    sealed = tmp_path / "model.mseal"
    source = {
        "single": torch_models.onnx,
        "external": torch_models.onnx_external,
        "ort": _ort_format(torch_models.onnx, tmp_path / "model.ort") if what == "ort" else None,
    }[what]
    assert source is not None
    modelseal.seal(source, sealed, mek=mek)
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


def test_ort_format_single_file(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    plaintext_scan: PlaintextScan,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain_path = _ort_format(torch_models.onnx, tmp_path / "model.ort")
    sealed = tmp_path / "model.mseal"
    modelseal.seal(plain_path, sealed, mek=mek)
    spy = _Spy(ort.InferenceSession)
    monkeypatch.setattr(ort, "InferenceSession", spy)
    sinks = _Sinks(monkeypatch)
    session = sealed_ort.load_session(sealed, identity, providers=["CPUExecutionProvider"])
    _join_zeroizers()
    # The same memfd route as .onnx, told the format (a /proc/self/fd path has no extension).
    assert isinstance(spy.models[0], str) and spy.models[0].startswith("/proc/self/fd/")
    assert [s.closed for s in sinks.made] == [True] and sinks.zeroized == [plain_path.stat().st_size]
    x = {"x": torch_models.inputs}
    expected = _plain_session(plain_path).run(None, x)[0]
    np.testing.assert_allclose(session.run(None, x)[0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(session.run(None, x)[0], torch_models.expected, rtol=1e-4, atol=1e-5)
    plaintext_scan.assert_absent(plain_path.read_bytes(), [plain_path, *torch_models.originals()])


def test_ort_format_in_a_folder_beside_the_onnx(
    tmp_path: Path, torch_models: TorchModels, identity: modelseal.MEK, mek: bytes
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(torch_models.onnx, src / "model.onnx")
    _ort_format(torch_models.onnx, src / "model.ort")  # ORT's converter writes it beside the .onnx
    sealed = tmp_path / "both.mseal"
    modelseal.seal(src, sealed, mek=mek)
    x = {"x": torch_models.inputs}
    default = sealed_ort.load_session(sealed, identity)  # the .onnx wins; the .ort is not its data
    from_ort = sealed_ort.load_session(sealed, identity, model="model.ort")  # bytes route
    options = ort.SessionOptions()
    with_options = sealed_ort.load_session(sealed, identity, model="model.ort", sess_options=options)
    assert options.get_session_config_entry("session.load_model_format") == "ORT"
    _join_zeroizers()
    for session in (default, from_ort, with_options):
        np.testing.assert_allclose(session.run(None, x)[0], torch_models.expected, rtol=1e-4, atol=1e-5)
    (src / "model.onnx").unlink()
    (src / "notes.txt").write_text("not a model")  # a folder still, not a single file
    only_ort = tmp_path / "only-ort.mseal"
    modelseal.seal(src, only_ort, mek=mek)
    session = sealed_ort.load_session(only_ort, identity)  # no .onnx: the only .ort is the model
    _join_zeroizers()
    np.testing.assert_allclose(session.run(None, x)[0], torch_models.expected, rtol=1e-4, atol=1e-5)


def test_in_memory_initializers_outside_any_prepack_are_copied(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes
) -> None:
    """Add/Mul keep their initializers as they are (no prepacked copy): ORT must still have copied
    them out of our buffers, since the plaintext is zeroized right after the session is built."""
    onnx = need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    bias, scale = (rng.standard_normal(4096).astype(np.float32) for _ in range(2))
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["h"]), helper.make_node("Mul", ["h", "c"], ["y"])],
        "add-mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096])],
        [numpy_helper.from_array(bias, "b"), numpy_helper.from_array(scale, "c")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    folder = tmp_path / "add-mul"
    folder.mkdir()
    onnx.save_model(
        proto,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    modelseal.seal(folder, tmp_path / "add-mul.mseal", mek=mek)
    session = sealed_ort.load_session(tmp_path / "add-mul.mseal", identity)
    _join_zeroizers()
    x = rng.standard_normal(4096).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], (x + bias) * scale, rtol=1e-6)


EXIT_RIGHT_AFTER = """
import sys, time
from modelseal import memfd
from modelseal.memory import zero_fill
from modelseal.runtimes import onnxruntime as sealed_ort
import modelseal

real = memfd.zero_fill
def slow_fill(mapping):
    time.sleep(0.5)  # the interpreter reaches its end long before this zeroize is done
    real(mapping)
    print("zeroized", len(mapping), flush=True)
memfd.zero_fill = slow_fill
sealed_ort.load_session(sys.argv[1], modelseal.MEK(bytes.fromhex(sys.argv[2])))
print("returned", flush=True)
"""


def test_the_interpreter_waits_for_the_zeroize_at_exit(
    tmp_path: Path, torch_models: TorchModels, mek: bytes
) -> None:
    sealed = tmp_path / "model.mseal"
    modelseal.seal(torch_models.onnx, sealed, mek=mek)
    run = subprocess.run(
        [sys.executable, "-c", EXIT_RIGHT_AFTER, str(sealed), mek.hex()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["returned", "zeroized", str(torch_models.onnx.stat().st_size)]
