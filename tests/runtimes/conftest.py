"""Runtime-loader tests: real models built here, sealed, loaded from memory, compared with plaintext.

A machine without a runtime skips its tests (pytest.importorskip); in CI (CI=true) a skip is a
failure (tests/ci_no_skip.py), so a missing runtime cannot turn the CI run green by silence.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest

import modelseal

from .helpers import PlaintextScan, TorchModels, need


@pytest.fixture
def plaintext_scan(tmp_path: Path) -> PlaintextScan:
    return PlaintextScan([Path(tempfile.gettempdir()), Path.cwd(), tmp_path, Path("/dev/shm")])


# -- keys and models -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mek() -> bytes:
    return modelseal.keygen()


@pytest.fixture(scope="session")
def identity(mek: bytes) -> modelseal.MEK:
    return modelseal.MEK(mek)


@pytest.fixture(scope="session")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> TorchModels:
    torch = need("torch")
    onnx = need("onnx")
    root = tmp_path_factory.mktemp("torch-models")

    def make() -> Any:
        return torch.nn.Sequential(
            torch.nn.Linear(32, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 128),
            torch.nn.Tanh(),
            torch.nn.Linear(128, 8),
        ).eval()

    # A fresh seed per session: another test run next door writes other weights, not ours.
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    module = make()
    x = torch.randn(5, 32)
    with torch.no_grad():
        expected = module(x).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (x,),
            str(root / "model.onnx"),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}},
            dynamo=False,
        )
    external = root / "external"
    external.mkdir()
    onnx.save_model(
        onnx.load(str(root / "model.onnx")),
        str(external / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx_data",
        size_threshold=0,
    )
    state_dict = root / "weights.pt"
    torch.save(module.state_dict(), state_dict)
    return TorchModels(root, root / "model.onnx", external, state_dict, x.numpy(), expected, module, make)


@pytest.fixture(scope="session")
def ir_folder(torch_models: TorchModels) -> Path:
    """The same MLP as OpenVINO IR (model.xml + model.bin, f32 weights)."""
    ov = need("openvino")
    torch = need("torch")
    ir = torch_models.root / "ir"
    ir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace deprecation notices from the converter
        converted = ov.convert_model(torch_models.module, example_input=torch.from_numpy(torch_models.inputs))
    ov.save_model(converted, str(ir / "model.xml"), compress_to_fp16=False)
    return ir
