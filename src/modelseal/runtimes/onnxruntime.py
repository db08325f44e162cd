"""ONNX Runtime: an InferenceSession from a sealed model, plaintext in memory only.

    from modelseal.runtimes.onnxruntime import load_session
    session = load_session("model.mseal", modelseal.MEK(mek), providers=["CPUExecutionProvider"])

A sealed ``.onnx`` is decrypted into a private anonymous mapping (huge pages, no core dump, not
inherited by a child), then split without copying the weights: the graph, rewritten with every
initializer of :data:`EXTERNAL_MIN` bytes or more marked as external data, goes to
``InferenceSession`` as a small zeroizable ``bytes`` object, and those initializers are handed over
as ``OrtValue``s laid over the mapping in place (``SessionOptions.add_external_initializers``).
ORT copies them into the session while it is built (documented for that API, and pinned by
tests/runtimes), so it neither parses nor copies the weights out of a protobuf: a sealed load costs
about what a plaintext load from a path does (docs/benchmarks-runtimes.md). Once the session is
built the mapping is zeroized and freed on a helper thread while this function returns; the
interpreter waits for that thread at exit.

If you pass ``sess_options``, nothing is registered on them for a single file (ORT would keep the
initializers registered there, pointing at freed memory, and refuse or misread them in the next
session built with those options): the model goes whole, decrypted into a memfd that is frozen so
nobody can write it and handed to ORT as ``/proc/self/fd/N`` (slower: ORT parses and copies the
weights itself). A sealed ORT format model (``.ort``, single file) takes that memfd route too. The
memfd's descriptor is closed once the session is built, and its pages are zeroized on the same
helper thread.

A sealed folder with one ``.onnx`` and its external data files gives the data files to ORT as
in-memory buffers (``add_external_initializers_from_files_in_memory``; on your ``sess_options`` if
you pass them: do not reuse those for another session), and splits the ``.onnx`` as above when the
options are ours: nothing is written anywhere. Install with ``pip install 'modelseal[onnxruntime]'``.

The returned session cannot be re-created from the model bytes (they are zeroized), so provider
fallback and ``set_providers`` are disabled on it: build a new session to change providers. For an
``.ort`` model, ``session.load_model_format`` is set to ``ORT`` on your ``sess_options``.
"""

from __future__ import annotations

import os
import posixpath
import sys
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
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

# Initializers this size or larger are handed to ORT in place; smaller ones stay in the graph.
# ORT needs in-memory external data of >= 128 bytes (shape inference reads small initializers such
# as Reshape's shape from the graph); 1 KiB is also onnx's own default external-data threshold.
EXTERNAL_MIN = 1024


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
    # Initializers registered on a caller's SessionOptions would stay there, pointing at freed
    # memory, and break the next session built with it (ORT refuses names that are not in that
    # graph, or reads them): with the caller's options, the graph goes whole, as a memfd or bytes.
    options = session_kwargs.pop("sess_options", None)
    in_place_ok = options is None and _pybytes.supported()

    def allocate(contents: Manifest, size: int) -> PlainSink:
        name = _choose(contents, model)
        chosen.append(name)
        entry = next(e for e in contents.entries if e.name == name)
        whole = len(contents.entries) == 1 and entry.offset == 0 and entry.size == size > 0
        if whole and (name.lower().endswith(".ort") or not in_place_ok):
            direct.append(MemfdSink("modelseal-onnx", size))
            return direct[0]
        return PlainBuffer(size)

    sealed = open_into(path, identity, signer=signer, allocate=allocate)
    graph: _pybytes.BytesBuffer | None = None
    in_place: list[Any] = []  # OrtValues over the mapping: dropped before it is zeroized
    handed_off = False
    try:
        name = chosen[0]
        ours = options is None  # made here, so never seen by the caller: see below
        model_source: bytes | str
        in_place_types = _element_types(ort) if in_place_ok and name.lower().endswith(".onnx") else None
        if direct:
            # An .ort model, or the caller's options: ORT reads a path fastest (from bytes it copies
            # the model twice more), so the plaintext went into a memfd, frozen read-only for
            # everyone and opened through /proc/self/fd.
            direct[0].freeze()
            model_source = direct[0].path
        elif _pybytes.supported():
            graph, tensors = _graph_bytes(sealed.read(name), in_place_types)
            if tensors:
                # The large initializers go to ORT in place, as arrays over the mapping.
                if options is None:
                    options = ort.SessionOptions()
                model_view = sealed.read(name)
                in_place = [_ortvalue(ort, model_view, tensor) for tensor in tensors]
                del model_view
                options.add_external_initializers([t.name for t in tensors], in_place)
            model_source = graph.obj
        else:
            model_source = bytes(sealed.read(name))  # no in-place fill here: an unzeroizable copy
        if name.lower().endswith(".ort"):
            # ORT tells the formats apart by the path's extension, and /proc/self/fd/N has none.
            options = options or ort.SessionOptions()
            options.add_session_config_entry("session.load_model_format", "ORT")
        options = _add_external_data(ort, sealed, name, options)
        session = ort.InferenceSession(model_source, sess_options=options, **session_kwargs)
        del model_source
        # ORT copied the in-place initializers into the session ("the user provided buffers can then
        # be deallocated", AddExternalInitializers' documentation): our views may go.
        in_place.clear()
        _forget_plaintext(session, ours)
        options = None
        if direct:
            direct[0].close_fd()  # ORT has read and closed it: from now on nobody can open it
        _close_in_background(sealed)
        handed_off = True
        return session
    finally:
        in_place.clear()
        if graph is not None:
            graph.close()
        if not handed_off:
            sealed.close()


# ONNX's protobuf field numbers (onnx/onnx.proto) that the split reads or writes.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_SEGMENT, _TENSOR_NAME, _TENSOR_RAW = 1, 2, 3, 8, 9
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_LEN, _VARINT = 2, 0  # protobuf wire types

# Appended to an initializer whose raw_data is taken out: `external_data {key: "location" value:
# ...}` and `data_location: EXTERNAL`. ORT replaces only initializers marked external with what
# add_external_initializers gives it (checking name, type and shape), before it would look at the
# location (measured: if an initializer were left unreplaced, ORT would look for that file in the cwd).
_PLACEHOLDER_LOCATION = b"modelseal-in-memory"
_PLACEHOLDER = (
    b"\x6a"  # field 13, length-delimited
    + bytes([2 + 8 + 2 + len(_PLACEHOLDER_LOCATION)])
    + b"\x0a\x08location\x12"
    + bytes([len(_PLACEHOLDER_LOCATION)])
    + _PLACEHOLDER_LOCATION
    + b"\x70\x01"  # field 14 = 1 (EXTERNAL)
)

# ONNX element types ORT can take from a numpy array of the same item size (little-endian raw_data):
# numpy's own types, then those numpy lacks, passed as same-size integers with their ONNX type.
_NUMPY_TYPES = {
    1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "b1", 10: "<f2",
    11: "<f8", 12: "<u4", 13: "<u8",
}  # fmt: skip
_REINTERPRETED_TYPES = {16: "<u2", 17: "u1", 18: "u1", 19: "u1", 20: "u1"}  # bfloat16, float8 x 4


class _NotOnnx(Exception):
    """The bytes do not parse as the protobuf the split expects: ORT gets them whole instead."""


@dataclass(frozen=True)
class _Tensor:
    name: str
    onnx_type: int
    dims: tuple[int, ...]
    start: int  # raw_data's place in the model file
    stop: int


@dataclass(frozen=True)
class _Split:
    pieces: list[memoryview | bytes]  # the rewritten model, in order: windows of the plaintext + framing
    size: int
    tensors: list[_Tensor]


def _choose(contents: Manifest, model: str | None) -> str:
    # ORT format (.ort) only where there is no .onnx: ORT's converter writes one beside the other.
    has_onnx = any(e.name.lower().endswith(".onnx") for e in contents.entries)
    return pick(contents.entries, (".onnx",) if has_onnx else (".ort",), model, "ONNX model")


def _add_external_data(ort: Any, sealed: Any, name: str, options: Any) -> Any:
    """Hand the files beside ``name`` (its external data) to ORT from memory; returns the options."""
    folder = posixpath.dirname(name)
    external = [
        (rel, e) for e in sealed.entries() if e.name != name and (rel := relative_to_folder(e.name, folder))
    ]
    if not external:
        return options
    if options is None:
        options = ort.SessionOptions()
    if not hasattr(options, "add_external_initializers_from_files_in_memory"):
        raise UsageError("this onnxruntime cannot take external data from memory: upgrade onnxruntime")
    # Measured (ORT 1.31, CPU): the session copies these initializers while it is built,
    # so the buffers may be zeroized right after; tests/runtimes check the outputs after that.
    options.add_external_initializers_from_files_in_memory(
        [rel for rel, _ in external],
        [sealed.read(e.name) for _, e in external],
        [e.size for _, e in external],
    )
    return options


def _forget_plaintext(session: Any, ours: bool) -> None:
    """Drop every reference the session keeps to the model's plaintext, which is about to be zeroized."""
    # The session keeps the model bytes only to rebuild itself on a provider fallback: a rebuild
    # must never happen.
    session.disable_fallback()
    session._model_bytes = None
    session._model_path = None
    session.set_providers = _cannot_rebuild
    if ours:
        # Our options still point at the plaintext (ORT clears only the session's own copy, which
        # get_session_options returns): dropped with the last reference, here and in the caller, so
        # nothing can build another session from them once the plaintext is freed.
        session._sess_options_initial = None


def _graph_bytes(
    model: memoryview, types: Collection[int] | None
) -> tuple[_pybytes.BytesBuffer, list[_Tensor]]:
    """The model for ORT as a zeroizable bytes object, and the initializers taken out of it.

    With ``types`` None (not an ONNX protobuf), or nothing worth taking out: the whole model.
    """
    split = None if types is None else _split_initializers(model, types)
    if split is None:
        return _pybytes.BytesBuffer.copy_of(model), []
    graph = _pybytes.BytesBuffer(split.size)
    done = 0
    for piece in split.pieces:
        graph.view[done : done + len(piece)] = piece
        done += len(piece)
    return graph, split.tensors


def _split_initializers(model: memoryview, types: Collection[int]) -> _Split | None:
    """The model with its large initializers' raw_data taken out, or None if nothing is worth it.

    Walks only ModelProto, its graph and the graph's initializers: everything else (nodes,
    subgraphs, small initializers) is copied as it is, in runs. Initializers with a data segment,
    external data already, an element type ORT cannot take from numpy, a size that does not match
    their shape, or a repeated name stay in the graph too: ORT then deals with them as usual.
    """
    if sys.byteorder != "little":  # raw_data is little-endian: the arrays would be misread
        return None
    out = _Pieces(model, 0)
    tensors: list[_Tensor] = []
    names: set[str] = set()
    try:
        for number, wire, start, value, end in _fields(model, 0, len(model)):
            if number != _MODEL_GRAPH or wire != _LEN:
                continue
            graph = _Pieces(model, value)
            for g_number, g_wire, g_start, g_value, g_end in _fields(model, value, end):
                if g_number != _GRAPH_INITIALIZER or g_wire != _LEN:
                    continue
                found = _external_candidate(model, g_value, g_end, types)
                if found is None or found[0].name in names:
                    continue
                tensor, raw_field = found
                names.add(tensor.name)
                tensors.append(tensor)
                initializer = _Pieces(model, g_value)
                initializer.replace(raw_field, tensor.stop, [])
                initializer.finish(g_end)
                initializer.add(_PLACEHOLDER)
                graph.replace(g_start, g_end, initializer.framed(_GRAPH_INITIALIZER))
            graph.finish(end)
            if graph.changed:
                out.replace(start, end, graph.framed(_MODEL_GRAPH))
        out.finish(len(model))
    except _NotOnnx:
        return None
    if not tensors:
        return None
    return _Split(out.pieces, out.size, tensors)


class _Pieces:
    """``model[start:...]`` with some spans replaced: windows of the model plus small new framing."""

    def __init__(self, model: memoryview, start: int) -> None:
        self._model = model
        self._next = start
        self.pieces: list[memoryview | bytes] = []
        self.size = 0
        self.changed = False

    def add(self, piece: memoryview | bytes) -> None:
        if len(piece):
            self.pieces.append(piece)
            self.size += len(piece)

    def replace(self, start: int, stop: int, pieces: list[memoryview | bytes]) -> None:
        """Keep the model up to ``start``, put ``pieces`` instead of ``model[start:stop]``."""
        self.add(self._model[self._next : start])
        for piece in pieces:
            self.add(piece)
        self._next = stop
        self.changed = True

    def finish(self, stop: int) -> None:
        self.add(self._model[self._next : stop])
        self._next = stop

    def framed(self, number: int) -> list[memoryview | bytes]:
        """These bytes as the value of length-delimited field ``number``."""
        return [_encode_varint(number << 3 | _LEN) + _encode_varint(self.size), *self.pieces]


def _varint(buf: memoryview, pos: int, stop: int) -> tuple[int, int]:
    value = shift = 0
    while pos < stop and shift < 64:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _NotOnnx


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf: memoryview, start: int, stop: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field, start of its value, end) for each field."""
    pos = start
    while pos < stop:
        key, value = _varint(buf, pos, stop)
        wire = key & 7
        if wire == _VARINT:
            _, end = _varint(buf, value, stop)
        elif wire == 1:
            end = value + 8
        elif wire == 5:
            end = value + 4
        elif wire == _LEN:
            length, value = _varint(buf, value, stop)
            end = value + length
        else:  # groups (3, 4) are not in ONNX; anything else is not protobuf
            raise _NotOnnx
        if end > stop or key >> 3 == 0:
            raise _NotOnnx
        yield key >> 3, wire, pos, value, end
        pos = end


def _external_candidate(
    model: memoryview, start: int, stop: int, types: Collection[int]
) -> tuple[_Tensor, int] | None:
    """The TensorProto in ``model[start:stop]`` and where its raw_data field starts, if it can go in place."""
    dims: list[int] = []
    onnx_type = 0
    name = None
    raw: tuple[int, int, int] | None = None
    for number, wire, field, value, end in _fields(model, start, stop):
        if number == _TENSOR_DIMS and wire == _VARINT:
            dims.append(_varint(model, value, end)[0])
        elif number == _TENSOR_DIMS and wire == _LEN:  # packed
            pos = value
            while pos < end:
                dim, pos = _varint(model, pos, end)
                dims.append(dim)
        elif number == _TENSOR_TYPE and wire == _VARINT:
            onnx_type = _varint(model, value, end)[0]
        elif number == _TENSOR_NAME and wire == _LEN:
            try:
                name = str(model[value:end], "utf-8")
            except UnicodeDecodeError:
                return None
        elif number == _TENSOR_RAW and wire == _LEN and raw is None:
            raw = (field, value, end)
        elif number in (_TENSOR_SEGMENT, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _TENSOR_RAW):
            return None
    if raw is None or not name or raw[2] - raw[1] < EXTERNAL_MIN:
        return None
    dtype = _NUMPY_TYPES.get(onnx_type) or _REINTERPRETED_TYPES.get(onnx_type)
    negative = any(d >= 1 << 63 for d in dims)  # an int64 below zero, as a varint
    if dtype is None or onnx_type not in types or negative:
        return None
    count = 1
    for dim in dims:
        count *= dim
    if count * int(dtype[-1]) != raw[2] - raw[1]:  # the item size ends each type string
        return None
    return _Tensor(name, onnx_type, tuple(dims), raw[1], raw[2]), raw[0]


def _element_types(ort: Any) -> set[int]:
    """The ONNX element types this onnxruntime can take in place from numpy arrays."""
    types = set(_NUMPY_TYPES)
    if hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"):
        types.update(_REINTERPRETED_TYPES)
    return types


def _ortvalue(ort: Any, model: memoryview, tensor: _Tensor) -> Any:
    """An OrtValue over the tensor's raw_data where it lies in the mapping (no copy)."""
    import numpy as np  # a dependency of onnxruntime

    if tensor.onnx_type in _NUMPY_TYPES:
        array = np.frombuffer(model[tensor.start : tensor.stop], _NUMPY_TYPES[tensor.onnx_type])
        return ort.OrtValue.ortvalue_from_numpy(array.reshape(tensor.dims))
    array = np.frombuffer(model[tensor.start : tensor.stop], _REINTERPRETED_TYPES[tensor.onnx_type])
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.reshape(tensor.dims), tensor.onnx_type)


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
