"""ONNX Runtime: an InferenceSession from a sealed model, plaintext in memory only.

    from modelseal.runtimes.onnxruntime import load_session
    session = load_session("model.mseal", modelseal.MEK(mek), providers=["CPUExecutionProvider"])

A sealed single ``.onnx`` (or ORT format ``.ort``) file is decrypted straight into a memfd (through
our own shared mapping, whose pages a helper thread maps in ahead of the decryption), frozen so
nobody can write it, and handed to ``InferenceSession`` as ``/proc/self/fd/N``: ORT loads a path
faster than bytes (from bytes it copies the model twice). Once the session is built the memfd's
descriptor is closed, so nothing can open it any more, and its pages are zeroized and freed on a
helper thread while this function returns: ORT keeps its own parsed copy, and the only way left to
the plaintext is a mapping private to this module. The interpreter waits for that thread at exit.
A sealed folder with one ``.onnx`` and its external data files gives the
data files to ORT as in-memory buffers (``add_external_initializers_from_files_in_memory``): nothing
is written anywhere. Install with ``pip install 'modelseal[onnxruntime]'``.

The returned session cannot be re-created from the model bytes (they are zeroized), so provider
fallback and ``set_providers`` are disabled on it: build a new session to change providers. If you pass
``sess_options``, the in-memory external data is registered on it (and, for an ``.ort`` model, its
``session.load_model_format`` is set to ``ORT``): do not reuse it for another session.
"""

from __future__ import annotations

import os
import posixpath
import threading
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import UsageError
from ..format.manifest import Manifest
from ..memfd import MemfdSink
from ..memory import PlainBuffer, PlainSink
from ..opening import Identities, SealedModel, open_into
from . import _pybytes
from ._common import pick, relative_to_folder, require

__all__ = ["load_session"]


def load_session(
    path: str | os.PathLike[str],
    identity: Identities,
    *,
    signer: Ed25519PublicKey | None = None,
    model: str | None = None,
    **session_kwargs: Any,
) -> Any:
    """Open ``path`` and build an ``onnxruntime.InferenceSession`` from memory.

    ``model`` names the ``.onnx`` (or ``.ort``) file inside a sealed folder (default: the only one).
    ``session_kwargs`` go to ``InferenceSession`` (``sess_options``, ``providers``, ...).
    """
    ort = require("onnxruntime", "onnxruntime")
    chosen: list[str] = []
    direct: list[MemfdSink] = []

    def allocate(contents: Manifest, size: int) -> PlainSink:
        # ORT format (.ort) only where there is no .onnx: ORT's converter writes one beside the other.
        has_onnx = any(e.name.lower().endswith(".onnx") for e in contents.entries)
        name = pick(contents.entries, (".onnx",) if has_onnx else (".ort",), model, "ONNX model")
        chosen.append(name)
        entry = next(e for e in contents.entries if e.name == name)
        if len(contents.entries) == 1 and entry.offset == 0 and entry.size == size > 0:
            direct.append(MemfdSink("modelseal-onnx", size))
            return direct[0]
        return PlainBuffer(size)

    sealed = open_into(path, identity, signer=signer, allocate=allocate)
    graph: _pybytes.BytesBuffer | None = None
    handed_off = False
    try:
        name = chosen[0]
        model_source: bytes | str
        if direct:
            # ORT reads a path fastest (from bytes it copies the model twice more): the plaintext
            # goes into a memfd frozen read-only for everyone, opened through /proc/self/fd.
            direct[0].freeze()
            model_source = direct[0].path
        elif _pybytes.supported():
            graph = _pybytes.BytesBuffer.copy_of(sealed.read(name))
            model_source = graph.obj
        else:
            model_source = bytes(sealed.read(name))  # no in-place fill here: an unzeroizable copy
        options = session_kwargs.pop("sess_options", None)
        if name.lower().endswith(".ort"):
            # ORT tells the formats apart by the path's extension, and /proc/self/fd/N has none.
            if options is None:
                options = ort.SessionOptions()
            options.add_session_config_entry("session.load_model_format", "ORT")
        folder = posixpath.dirname(name)
        external = [
            (rel, e)
            for e in sealed.entries()
            if e.name != name and (rel := relative_to_folder(e.name, folder))
        ]
        if external:
            if options is None:
                options = ort.SessionOptions()
            if not hasattr(options, "add_external_initializers_from_files_in_memory"):
                raise UsageError(
                    "this onnxruntime cannot take external data from memory: upgrade onnxruntime"
                )
            # Measured (ORT 1.31, CPU): the session copies these initializers while it is built,
            # so the buffers may be zeroized right after; tests/runtimes check the outputs after that.
            options.add_external_initializers_from_files_in_memory(
                [rel for rel, _ in external],
                [sealed.read(e.name) for _, e in external],
                [e.size for _, e in external],
            )
        session = ort.InferenceSession(model_source, sess_options=options, **session_kwargs)
        del model_source
        # The session keeps the model bytes only to rebuild itself on a provider fallback; they are
        # about to be zeroized, so a rebuild must never happen.
        session.disable_fallback()
        session._model_bytes = None
        session._model_path = None
        session.set_providers = _cannot_rebuild
        if direct:
            direct[0].close_fd()  # ORT has read and closed it: from now on nobody can open it
        _close_in_background(sealed)
        handed_off = True
        return session
    finally:
        if graph is not None:
            graph.close()
        if not handed_off:
            sealed.close()


# The name of the helper threads that zeroize and free a model's plaintext after load_session.
ZEROIZE_THREAD = "modelseal-zeroize"


def _close_in_background(sealed: SealedModel) -> None:
    """Zeroize and free the plaintext on a helper thread (0.045 s for 218 MB, off the caller's path).

    Only this thread can still reach it: the SealedModel never leaves this module and the memfd's
    descriptor is closed. Not a daemon thread, so the interpreter waits for it before exiting.
    """
    try:
        threading.Thread(target=sealed.close, name=ZEROIZE_THREAD).start()
    except RuntimeError:  # no thread to be had (interpreter shutting down, thread limit): do it now
        sealed.close()


def _cannot_rebuild(*args: Any, **kwargs: Any) -> NoReturn:
    raise UsageError("a session from a sealed model cannot be rebuilt: call load_session again")
