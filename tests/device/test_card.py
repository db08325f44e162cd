"""The card and its client: loading, running, resets, refusals, and a host that never decrypts."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import modelseal
from modelseal import device
from modelseal.device import attestation_pb2 as pb
from modelseal.device import client as client_module
from modelseal.device.server import SERVICE

from .helpers import Card, OnnxModel


def seal_for(card: device.DeviceServer, card_key: Any, model: OnnxModel, out: Path) -> Path:
    request = os.urandom(16)
    key = device.verify_report(
        device.attest("127.0.0.1", card.port, 5, request), card_key.public_key(), request
    )
    modelseal.seal(model.path, out, [key.recipient], mek=modelseal.keygen())
    return out


def connect(card: device.DeviceServer) -> device.DeviceClient:
    return device.DeviceClient("127.0.0.1", card.port, 5, timeout=30)


def test_load_run_reset(
    card: device.DeviceServer, card_key: Any, onnx_model: OnnxModel, tmp_path: Path
) -> None:
    sealed = seal_for(card, card_key, onnx_model, tmp_path / "m.mseal")
    with connect(card) as c:
        loaded = c.load(sealed)
        assert [i.name for i in loaded.inputs] == ["x"] and [o.name for o in loaded.outputs] == ["y"]
        assert loaded.session_counter == 1
        out = c.run(loaded.handle, onnx_model.inputs)
        np.testing.assert_allclose(out["y"], onnx_model.expected["y"], rtol=1e-5, atol=1e-5)
        assert c.reset() == 2
        with pytest.raises(device.DeviceError, match="no model"):
            c.run(loaded.handle, onnx_model.inputs)  # every model is dropped with the session
        with pytest.raises(modelseal.NoMatchingIdentityError, match=device.NOT_THIS_SESSION):
            c.load(sealed)
        assert c.reset() == 3


def test_refusals_map_to_errors(
    card: device.DeviceServer, card_key: Any, onnx_model: OnnxModel, tmp_path: Path
) -> None:
    sealed = seal_for(card, card_key, onnx_model, tmp_path / "m.mseal")
    data = bytearray(sealed.read_bytes())
    data[-100] ^= 1
    tampered = tmp_path / "tampered.mseal"
    tampered.write_bytes(data)
    with connect(card) as c:
        with pytest.raises(modelseal.IntegrityError, match="tampered"):
            c.load(tampered)
        with pytest.raises(modelseal.UsageError, match="not a modelseal"):
            c.load_stream([b"plain bytes, not a sealed model"])
        with pytest.raises(modelseal.UsageError, match="no model bytes"):
            c.load_stream([])
        handle = c.load(sealed).handle
        with pytest.raises(modelseal.UsageError, match="inference failed"):
            c.run(handle, {"x": np.zeros((2, 3), np.float32)})
        with pytest.raises(modelseal.UsageError, match="numeric only"):
            c.run(handle, {"x": np.array(["a"], dtype=object)})
    with (
        device.DeviceClient("127.0.0.1", card.port, 4) as wrong,
        pytest.raises(device.DeviceError, match="no device 4 here"),
    ):
        wrong.reset()
    assert card.service.session_counter == 1


def test_unreachable_card_is_one_line(card: device.DeviceServer) -> None:
    port = card.port
    card.stop()
    with pytest.raises(device.DeviceError, match="cannot reach device 5") as caught:
        device.attest("127.0.0.1", port, 5, b"x", timeout=5)
    assert "\n" not in str(caught.value)


def test_port_in_use_is_refused(card: device.DeviceServer, card_key: Any) -> None:
    with pytest.raises(modelseal.ListenError, match="cannot listen"):
        device.DeviceServer(1, card_key, port=card.port, notice=lambda _: None)


# -- the host never holds the file key or plaintext ----------------------------------------------


def test_client_code_cannot_decrypt() -> None:
    """The client module imports nothing that unwraps a key or decrypts a payload."""
    tree = ast.parse(inspect.getsource(client_module))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    forbidden = {"..opening", "..header_auth", "..payload", "..recipients", "..runtimes", "cryptography"}
    forbidden |= {"open", "open_into", "unlock", "X25519Identity", "MEK", "load_identity", "load_session"}
    assert not imported & forbidden, imported & forbidden
    assert "modelseal.open" not in inspect.getsource(client_module)


class _Recorder:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def load(self, chunks: Iterator[pb.ModelChunk], context: Any) -> pb.LoadModelResponse:
        self.received.append(b"".join(c.data for c in chunks))
        return pb.LoadModelResponse(handle="recorded")


def test_client_sends_exactly_the_sealed_bytes(tmp_path: Path) -> None:
    sealed = tmp_path / "m.mseal"
    modelseal.seal(_random_file(tmp_path / "m.bin"), sealed, mek=modelseal.keygen())
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "LoadModel": grpc.stream_unary_rpc_method_handler(
                        recorder.load,
                        request_deserializer=pb.ModelChunk.FromString,
                        response_serializer=pb.LoadModelResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with device.DeviceClient("127.0.0.1", port, 0) as c:
            assert c.load(sealed).handle == "recorded"
    finally:
        server.stop(None).wait()
    assert recorder.received == [sealed.read_bytes()]


def _random_file(path: Path) -> Path:
    path.write_bytes(os.urandom(3 * (1 << 20) + 17))  # several 1 MiB client chunks
    return path


HOST_SCRIPT = """
import sys
import numpy as np
import modelseal.header_auth, modelseal.opening, modelseal.recipients.x25519
from modelseal.format.stream import PayloadCipher

def trap(*args, **kwargs):
    raise SystemExit("the host tried to unwrap or decrypt")

# Every way into a file key or plaintext fails in this (host) process from here on.
modelseal.header_auth.unlock = modelseal.opening.unlock = trap
modelseal.opening.open_into = modelseal.opening.open = trap
PayloadCipher.decrypt_into = trap
modelseal.recipients.x25519.X25519Identity.unwrap = trap

from modelseal import device
port, sealed, x = int(sys.argv[1]), sys.argv[2], np.load(sys.argv[3])
with device.DeviceClient("127.0.0.1", port, 0) as card:
    loaded = card.load(sealed)
    np.save(sys.argv[4], card.run(loaded.handle, {"x": x})["y"])
"""


def test_host_process_never_decrypts(
    tmp_path: Path, onnx_model: OnnxModel, spawn_cards: Callable[[list[int]], list[Card]]
) -> None:
    (card,) = spawn_cards([0])
    request = os.urandom(16)
    report = device.attest("127.0.0.1", card.port, 0, request)
    key = device.verify_report(report, modelseal.load_signer_public(card.pub), request)
    sealed = tmp_path / "m.mseal"
    modelseal.seal(onnx_model.path, sealed, [key.recipient], mek=modelseal.keygen())
    np.save(tmp_path / "x.npy", onnx_model.inputs["x"])
    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT)
    subprocess.run(
        [sys.executable, script, str(card.port), sealed, tmp_path / "x.npy", tmp_path / "y.npy"],
        check=True,
        timeout=60,
    )
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), onnx_model.expected["y"], rtol=1e-5, atol=1e-5)
