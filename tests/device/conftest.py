"""Fixtures for the device tests: a real small ONNX model, card identity keys, cards on loopback.

Cards listen on 127.0.0.1 only, on ports the kernel picks (--port 0; the card prints the one it
got), and every card is stopped at teardown whatever the test did.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import modelseal

np = pytest.importorskip("numpy", reason="numpy not installed (extra: device)")
pytest.importorskip("grpc", reason="grpcio not installed (extra: device)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (extra: device)")

from modelseal import device  # noqa: E402

from .helpers import Card, OnnxModel, build_mlp, stop, wait_ready  # noqa: E402


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    root = tmp_path_factory.mktemp("device-model")
    path = root / "model.onnx"
    build_mlp(path, int.from_bytes(os.urandom(4), "little"))
    x = np.random.default_rng(7).standard_normal((3, 8)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    return OnnxModel(path, {"x": x}, {"y": y})


@pytest.fixture
def spawn_cards(tmp_path: Path) -> Iterator[Callable[[list[int]], list[Card]]]:
    """Start `modelseal device serve` processes (one per id, each its own identity key), all at once."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(ids: list[int]) -> list[Card]:
        pending = []
        for device_id in ids:
            key = tmp_path / f"dev{device_id}.key"
            pub, _ = modelseal.write_signer(modelseal.generate_signer(), key)
            log = tmp_path / f"card{device_id}.log"
            command = [sys.executable, "-m", "modelseal", "device", "serve", "--device-id", str(device_id)]
            command += ["--host", "127.0.0.1", "--port", "0", "--identity-key", str(key)]
            with log.open("wb") as err:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
            started.append(process)
            pending.append((device_id, key, pub, process, log))
        return [Card(i, wait_ready(p, log), key, pub, p, log) for i, key, pub, p, log in pending]

    yield spawn
    for process in started:
        stop(process)


@pytest.fixture
def card_key() -> Any:
    return modelseal.generate_signer()


@pytest.fixture
def card(card_key: Any) -> Iterator[device.DeviceServer]:
    """An in-process card (device 5) on a free loopback port."""
    server = device.DeviceServer(5, card_key, host="127.0.0.1", port=0, notice=lambda _: None)
    server.start()
    try:
        yield server
    finally:
        server.stop()
