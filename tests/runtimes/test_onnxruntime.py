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
from modelseal import memfd, memory
from modelseal.memory import zero_fill
from modelseal.runtimes import _pybytes
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


class _Buffers:
    """Records the loader's PlainBuffers and checks each one is all zeros right after its zeroize."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[memory.PlainBuffer] = []
        self.zeroized: list[int] = []
        real_buffer = memory.PlainBuffer

        def make(size: int) -> memory.PlainBuffer:
            self.made.append(real_buffer(size))
            return self.made[-1]

        def fill(mapping: Any) -> None:
            zero_fill(mapping)
            assert mapping[:] == bytes(len(mapping))
            self.zeroized.append(len(mapping))

        monkeypatch.setattr(sealed_ort, "PlainBuffer", make)
        monkeypatch.setattr(memory, "zero_fill", fill)


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
    buffers = _Buffers(monkeypatch)
    session = sealed_ort.load_session(sealed, identity, providers=["CPUExecutionProvider"])
    _join_zeroizers()  # the session must not need the plaintext once it is zeroized and freed
    size = torch_models.onnx.stat().st_size
    assert [b.closed for b in buffers.made] == [True] and buffers.zeroized == [size]

    plain = _plain_session(torch_models.onnx)
    x = {"x": torch_models.inputs}
    np.testing.assert_allclose(session.run(None, x)[0], plain.run(None, x)[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(session.run(None, x)[0], torch_models.expected, rtol=1e-4, atol=1e-5)
    # ORT got the graph as bytes, without the weights (handed over in place), zeroized once built.
    given = spy.models[0]
    assert isinstance(given, bytes) and len(given) < size // 4 and given == bytes(len(given))
    assert session._model_bytes is None and session._model_path is None
    plaintext_scan.assert_absent(torch_models.onnx.read_bytes(), torch_models.originals())


def test_single_file_without_in_place_bytes_takes_a_memfd(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    plaintext_scan: PlaintextScan,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a bytes object cannot be filled in place (not CPython), ORT reads a frozen memfd."""
    sealed = tmp_path / "model.mseal"
    modelseal.seal(torch_models.onnx, sealed, mek=mek)
    monkeypatch.setattr(_pybytes, "supported", lambda: False)
    spy = _Spy(ort.InferenceSession)
    monkeypatch.setattr(ort, "InferenceSession", spy)
    sinks = _Sinks(monkeypatch)
    session = sealed_ort.load_session(sealed, identity, providers=["CPUExecutionProvider"])
    _join_zeroizers()
    size = torch_models.onnx.stat().st_size
    assert [s.closed for s in sinks.made] == [True] and sinks.zeroized == [size]
    x = {"x": torch_models.inputs}
    np.testing.assert_allclose(session.run(None, x)[0], torch_models.expected, rtol=1e-4, atol=1e-5)
    # ORT read a frozen memfd through /proc/self/fd (no plaintext file), closed once it was built.
    given = spy.models[0]
    assert isinstance(given, str) and given.startswith("/proc/self/fd/")
    fd = int(given.rsplit("/", 1)[1])
    with pytest.raises(OSError):
        os.fstat(fd)  # closed (unless the number was reused, which nothing here does)
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


def test_folder_with_inline_and_external_initializers(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large inline initializers of a folder's .onnx go in place, its external data from memory."""
    onnx = need("onnx")
    folder = tmp_path / "mixed"
    folder.mkdir()
    onnx.save_model(
        onnx.load(str(torch_models.onnx)),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=32 * 1024,  # the 128 x 128 weight only: the others stay inline
    )
    modelseal.seal(folder, tmp_path / "mixed.mseal", mek=mek)
    given: list[str] = []
    real_ortvalue = sealed_ort._ortvalue

    def spy(ort_module: Any, model: memoryview, tensor: Any) -> Any:
        given.append(tensor.name)
        return real_ortvalue(ort_module, model, tensor)

    monkeypatch.setattr(sealed_ort, "_ortvalue", spy)
    session = sealed_ort.load_session(tmp_path / "mixed.mseal", identity)
    _join_zeroizers()
    assert len(given) == 2  # the first and last weights (16 and 4 KiB); the biases are under 1 KiB
    x = {"x": torch_models.inputs}
    expected = _plain_session(folder / "model.onnx").run(None, x)[0]
    np.testing.assert_allclose(session.run(None, x)[0], expected, rtol=1e-6, atol=1e-6)


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


@pytest.mark.parametrize("form", ["single", "folder"])
def test_in_memory_initializers_outside_any_prepack_are_copied(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes, form: str
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
    source = tmp_path / "add-mul"
    if form == "folder":
        source.mkdir()
        onnx.save_model(
            proto,
            str(source / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
    else:
        source = source.with_suffix(".onnx")
        onnx.save_model(proto, str(source))
    modelseal.seal(source, tmp_path / "add-mul.mseal", mek=mek)
    session = sealed_ort.load_session(tmp_path / "add-mul.mseal", identity)
    _join_zeroizers()
    x = rng.standard_normal(4096).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], (x + bias) * scale, rtol=1e-6)


def _many_kinds_of_initializer(onnx: Any) -> Any:
    """A model whose initializers take every branch of the split: element types numpy has and has
    not, small ones, a scalar, a Constant node and a subgraph (both stay in the graph)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    n = 1024  # int8 and bool weights of n bytes: just enough to go in place
    as_bf16 = (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    inits = [
        numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w32"),
        numpy_helper.from_array(rng.standard_normal((1, n)).astype(np.float64), "w64"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float16), "w16"),
        helper.make_tensor("wbf16", TensorProto.BFLOAT16, [n], as_bf16.tobytes(), raw=True),
        numpy_helper.from_array(rng.integers(-100, 100, n).astype(np.int8), "i8"),
        numpy_helper.from_array(rng.integers(0, n, 300).astype(np.int64), "idx"),
        numpy_helper.from_array(rng.integers(0, 2, (1, n)).astype(bool), "mask"),
        numpy_helper.from_array(rng.standard_normal(n // 8).astype(np.float32), "small"),  # < 1 KiB
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),  # scalar
        numpy_helper.from_array(np.array([1, n], np.int64), "shape"),  # Reshape's shape: inline
    ]
    branch = helper.make_graph(
        [helper.make_node("Add", ["v", "inner"], ["branch_out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(rng.standard_normal((1, n)).astype(np.float32), "inner")],
    )
    constant = numpy_helper.from_array(rng.standard_normal((1, n)).astype(np.float32), "const")
    nodes = [
        helper.make_node("MatMul", ["x", "w32"], ["a"]),
        helper.make_node("Cast", ["w64"], ["w64f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w16"], ["w16f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["wbf16"], ["wbf16f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["i8"], ["i8f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "w64f"], ["b"]),
        helper.make_node("Add", ["b", "w16f"], ["c"]),
        helper.make_node("Add", ["c", "wbf16f"], ["d"]),
        helper.make_node("Mul", ["d", "i8f"], ["e"]),
        helper.make_node("Gather", ["w32", "idx"], ["g"], axis=0),
        helper.make_node("ReduceMean", ["g"], ["gm"], axes=[0], keepdims=1),
        helper.make_node("Add", ["e", "gm"], ["f"]),
        helper.make_node("Where", ["mask", "f", "half"], ["h"]),
        helper.make_node("Constant", [], ["v"], value=constant),
        helper.make_node("ReduceSum", ["small"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "half"], ["cond"]),
        helper.make_node("If", ["cond"], ["k"], then_branch=branch, else_branch=branch),
        helper.make_node("Add", ["h", "k"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "many",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def test_every_kind_of_initializer_matches_plaintext(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx = need("onnx")
    plain_path = tmp_path / "many.onnx"
    onnx.save_model(_many_kinds_of_initializer(onnx), str(plain_path))
    modelseal.seal(plain_path, tmp_path / "many.mseal", mek=mek)
    given: list[str] = []
    real_ortvalue = sealed_ort._ortvalue

    def spy(ort_module: Any, model: memoryview, tensor: Any) -> Any:
        given.append(tensor.name)
        return real_ortvalue(ort_module, model, tensor)

    monkeypatch.setattr(sealed_ort, "_ortvalue", spy)
    x = {"x": np.random.default_rng().standard_normal((1, 1024)).astype(np.float32)}
    expected = _plain_session(plain_path).run(None, x)[0]
    session = sealed_ort.load_session(tmp_path / "many.mseal", identity)
    _join_zeroizers()  # zeroized: every in-place initializer must have been copied by ORT
    np.testing.assert_array_equal(session.run(None, x)[0], expected)
    assert given == ["w32", "w64", "w16", "wbf16", "i8", "idx", "mask"]


def test_sess_options_are_left_reusable(
    tmp_path: Path, torch_models: TorchModels, identity: modelseal.MEK, mek: bytes
) -> None:
    """Initializers handed over in place stay registered on the options that carried them, pointing
    at the freed plaintext: the caller's options must never carry them (the graph then goes whole,
    through a memfd), and ours must not be reachable from the session once it is built."""
    sealed = tmp_path / "model.mseal"
    modelseal.seal(torch_models.onnx, sealed, mek=mek)
    x = {"x": torch_models.inputs}
    options = ort.SessionOptions()
    for _ in range(2):
        session = sealed_ort.load_session(sealed, identity, sess_options=options)
        _join_zeroizers()
        np.testing.assert_allclose(session.run(None, x)[0], torch_models.expected, rtol=1e-4, atol=1e-5)
    ort.InferenceSession(str(torch_models.onnx), options)  # the same names, inline in the file
    session = sealed_ort.load_session(sealed, identity)
    _join_zeroizers()
    assert session._sess_options_initial is None
    again = ort.InferenceSession(str(torch_models.onnx), session.get_session_options())
    np.testing.assert_allclose(again.run(None, x)[0], torch_models.expected, rtol=1e-4, atol=1e-5)


def _tensor_bytes(*fields: bytes) -> memoryview:
    return memoryview(b"".join(fields))


def test_split_reads_packed_dims_and_refuses_what_it_cannot_place() -> None:
    types = sealed_ort._element_types(ort)
    raw = os.urandom(2 * 256 * 4)
    packed = _tensor_bytes(b"\x0a\x03\x02\x80\x02", b"\x10\x01", b"\x42\x01p", b"\x4a\x80\x10", raw)
    found = sealed_ort._external_candidate(packed, 0, len(packed), types)
    assert found is not None
    tensor, raw_field = found
    assert (tensor.name, tensor.onnx_type, tensor.dims) == ("p", 1, (2, 256))
    assert packed[tensor.start : tensor.stop] == raw and raw_field == 10
    unpacked = _tensor_bytes(b"\x08\x02\x08\x80\x02", b"\x10\x01", b"\x42\x01p", b"\x4a\x80\x10", raw)
    assert sealed_ort._external_candidate(unpacked, 0, len(unpacked), types) is not None
    refused = {
        "size does not match the shape": b"\x08\x03\x08\x80\x02\x10\x01\x42\x01p\x4a\x80\x10" + raw,
        "string tensor": b"\x08\x02\x08\x80\x02\x10\x08\x42\x01p\x4a\x80\x10" + raw,
        "no name": b"\x08\x02\x08\x80\x02\x10\x01\x4a\x80\x10" + raw,
        "already external": b"\x08\x02\x08\x80\x02\x10\x01\x42\x01p\x70\x01\x4a\x80\x10" + raw,
        "negative dim": b"\x08" + b"\xff" * 9 + b"\x01\x10\x01\x42\x01p\x4a\x80\x10" + raw,
    }
    for why, tensor_bytes in refused.items():
        view = memoryview(tensor_bytes)
        assert sealed_ort._external_candidate(view, 0, len(view), types) is None, why


def test_split_gives_up_on_what_is_not_an_onnx_model(torch_models: TorchModels) -> None:
    types = sealed_ort._element_types(ort)
    model = torch_models.onnx.read_bytes()
    assert sealed_ort._split_initializers(memoryview(model), types) is not None
    for garbage in (model[: len(model) // 2], b"\xff" * 64, b"\x3b" + model, os.urandom(4096)):
        assert sealed_ort._split_initializers(memoryview(garbage), types) is None


def test_an_invalid_model_reaches_ort_whole_and_is_refused(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes
) -> None:
    plain_path = tmp_path / "broken.onnx"
    plain_path.write_bytes(b"\xff" * 4096)
    modelseal.seal(plain_path, tmp_path / "broken.mseal", mek=mek)
    with pytest.raises(Exception, match=r"(?i)protobuf|parse"):
        sealed_ort.load_session(tmp_path / "broken.mseal", identity)
    _join_zeroizers()


EXIT_RIGHT_AFTER = """
import sys, time
from modelseal import memory
from modelseal.runtimes import onnxruntime as sealed_ort
import modelseal

real = memory.zero_fill
def slow_fill(mapping):
    time.sleep(0.5)  # the interpreter reaches its end long before this zeroize is done
    real(mapping)
    print("zeroized", len(mapping), flush=True)
memory.zero_fill = slow_fill
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
