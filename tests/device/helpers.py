"""Helpers of the device tests: the model builder, card processes and the CLI runner."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

READY = re.compile(r"device (\d+) listening on 127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class OnnxModel:
    path: Path
    inputs: dict[str, Any]
    expected: dict[str, Any]


def build_mlp(path: Path, seed: int) -> None:
    """A two-layer perceptron written with the ONNX helper API (no converter needed)."""
    onnx = pytest.importorskip("onnx", reason="onnx not installed (extra: demo)")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((8, 32)).astype(np.float32),
        "b1": rng.standard_normal(32).astype(np.float32),
        "w2": rng.standard_normal((32, 4)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@dataclass
class Card:
    device_id: int
    port: int
    key: Path
    pub: Path
    process: subprocess.Popen[bytes]
    log: Path


def wait_ready(process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = READY.search(text)
        if found:
            return int(found.group(2))
        if process.poll() is not None:
            raise AssertionError(f"card exited with {process.returncode}: {text}")
        time.sleep(0.05)
    raise AssertionError(f"card not ready within {timeout} s: {log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "modelseal", *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"modelseal {' '.join(map(str, args))} -> {result.returncode}: {result.stderr}")
    return result
