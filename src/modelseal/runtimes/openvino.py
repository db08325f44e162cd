"""OpenVINO: read or compile a sealed IR folder (xml + bin) or ONNX file, plaintext in memory only.

    from modelseal.runtimes.openvino import compile_model
    compiled = compile_model("model.mseal", modelseal.MEK(mek), "CPU")
    result = compiled([inputs])

IR weights are not copied: the ``.bin`` is handed to OpenVINO as
``ov.Tensor(array over the sealed mapping, shared_memory=True)``, and OpenVINO keeps pointing at that
memory (its constants, and the CPU plugin's compiled model, read it in place). OpenVINO does not tell
Python when it lets go, so the plaintext lives exactly as long as the Python object we return:

- ``read_model`` returns an ``ov.Model`` that owns the sealed plaintext. Anything compiled from it
  reads the same memory, so keep the Model referenced as long as you use what you compiled from it
  (``core.compile_model(read_model(...))`` without keeping the Model is a use-after-free).
- ``compile_model`` returns an ``ov.CompiledModel`` that owns the plaintext itself: prefer it. Keep it
  referenced while you use its infer requests (``create_infer_request``, ``AsyncInferQueue``).

When the owning object is garbage-collected the plaintext is zeroized and unmapped. ONNX models are
different: OpenVINO parses them into its own memory, so their plaintext is zeroized before we return.
ONNX with external data files is not supported here (use ONNX Runtime, or convert to IR). Install
with ``pip install 'modelseal[openvino]'``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import UsageError
from ..opening import Identities, SealedModel
from ..opening import open as open_sealed
from . import _pybytes
from ._common import pick, pinned_array, require, sibling

__all__ = ["compile_model", "read_model"]

# Attribute under which the returned objects own the plaintext (see the module docstring).
_OWNER = "_modelseal_plaintext"


def read_model(
    path: str | os.PathLike[str],
    identity: Identities,
    *,
    signer: Ed25519PublicKey | None = None,
    core: Any = None,
    model: str | None = None,
) -> Any:
    """Open ``path`` and read it with ``core.read_model``; ``model`` names the .xml/.onnx in a folder.

    The returned ``ov.Model`` owns the plaintext weights: see the module docstring for the lifetime.
    """
    ov = require("openvino", "openvino")
    result, _ = _load(ov, path, identity, signer, core, model)
    return result


def compile_model(
    path: str | os.PathLike[str],
    identity: Identities,
    device: str = "CPU",
    config: dict[str, Any] | None = None,
    *,
    signer: Ed25519PublicKey | None = None,
    core: Any = None,
    model: str | None = None,
) -> Any:
    """``read_model`` then ``core.compile_model(model, device, config)``; the result owns the plaintext."""
    ov = require("openvino", "openvino")
    read, core = _load(ov, path, identity, signer, core, model)
    compiled = core.compile_model(read, device, config or {})
    setattr(compiled, _OWNER, getattr(read, _OWNER))
    return compiled


def _load(
    ov: Any,
    path: str | os.PathLike[str],
    identity: Identities,
    signer: Ed25519PublicKey | None,
    core: Any,
    model: str | None,
) -> tuple[Any, Any]:
    """The ov.Model (owning its plaintext) and the Core that read it, made only after decryption."""
    sealed = open_sealed(path, identity, signer=signer)
    try:
        core = core if core is not None else ov.Core()
        result, owner = _read(ov, core, sealed, model)
    except BaseException:
        sealed.close()
        raise
    setattr(result, _OWNER, owner)
    return result, core


def _read(ov: Any, core: Any, sealed: SealedModel, model: str | None) -> tuple[Any, SealedModel | None]:
    """The ov.Model, and what must stay alive with it (None once the plaintext is zeroized)."""
    name = pick(sealed.entries(), (".xml", ".onnx"), model, "model")
    if name.lower().endswith(".onnx"):
        if len(sealed.entries()) > 1:
            raise UsageError(
                "OpenVINO cannot read ONNX external data from memory: seal the .onnx alone, "
                "or use modelseal.runtimes.onnxruntime"
            )
        with _zeroizable(sealed.read(name)) as graph:
            result = core.read_model(model=graph)
        # OpenVINO parsed the graph and weights into its own memory: drop the plaintext now.
        sealed.close()
        return result, None
    weights_name = sibling(name, ".bin")
    weights = None
    if weights_name in sealed.names():
        weights = ov.Tensor(pinned_array(sealed, weights_name, writable=True), shared_memory=True)
    with _zeroizable(sealed.read(name)) as xml:
        result = core.read_model(model=xml, weights=weights)
    return result, sealed


@contextlib.contextmanager
def _zeroizable(view: memoryview) -> Iterator[bytes]:
    """A bytes copy of a small file (IR xml, ONNX graph) for APIs that want bytes, zeroized after."""
    if not _pybytes.supported():
        yield bytes(view)
        return
    buffer = _pybytes.BytesBuffer.copy_of(view)
    try:
        yield buffer.obj
    finally:
        buffer.close()
