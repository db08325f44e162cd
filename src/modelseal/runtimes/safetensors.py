"""safetensors: zero-copy arrays over a sealed ``.safetensors`` file, header checked strictly.

    from modelseal.runtimes.safetensors import load
    tensors = load("model.mseal", modelseal.MEK(mek))              # dict[str, numpy.ndarray]
    tensors = load("model.mseal", modelseal.MEK(mek), framework="torch")

The header is parsed here, not by the safetensors package, with every bound checked before any
tensor is made: 8-byte little-endian header length <= 100 MB and within the file, a JSON object
without duplicate keys, a dtype whitelist, integer shapes, offsets inside the data region that tile
it exactly (no overlaps, gaps or trailing bytes, as the safetensors package requires), and
shape x itemsize == byte length.

Lifetime: every returned array (numpy, read-only) or tensor (torch, via ``torch.frombuffer``) is a view
into the sealed model's private mapping, and each keeps that mapping alive: the plaintext is
zeroized and unmapped when the last of them is garbage-collected, never under a live array. Torch
tensors cannot be read-only: writing to one changes this process's in-memory copy only.
Install with ``pip install 'modelseal[safetensors]'`` (numpy; torch for ``framework="torch"``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import FormatError, UsageError
from ..opening import Identities
from ..opening import open as open_sealed
from ._common import pick, pinned_array, require

__all__ = ["MAX_HEADER", "TensorInfo", "load", "parse_header"]

MAX_HEADER = 100_000_000  # the safetensors package's own limit

# dtype -> (itemsize, numpy dtype or None, torch dtype attribute name or None)
_DTYPES: dict[str, tuple[int, str | None, str | None]] = {
    "BOOL": (1, "|b1", "bool"),
    "U8": (1, "|u1", "uint8"),
    "I8": (1, "|i1", "int8"),
    "U16": (2, "<u2", "uint16"),
    "I16": (2, "<i2", "int16"),
    "U32": (4, "<u4", "uint32"),
    "I32": (4, "<i4", "int32"),
    "U64": (8, "<u8", "uint64"),
    "I64": (8, "<i8", "int64"),
    "F16": (2, "<f2", "float16"),
    "BF16": (2, None, "bfloat16"),
    "F32": (4, "<f4", "float32"),
    "F64": (8, "<f8", "float64"),
    "F8_E4M3": (1, None, "float8_e4m3fn"),
    "F8_E5M2": (1, None, "float8_e5m2"),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets in the data region, which starts right after the header
    end: int


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"safetensors header: duplicate key {key!r}")
        out[key] = value
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(data: memoryview | bytes) -> tuple[int, list[TensorInfo], dict[str, str]]:
    """Check a whole safetensors file's header; returns (data start, tensors, __metadata__)."""
    size = len(data)
    if size < 8:
        raise FormatError("not a safetensors file: shorter than its 8-byte header length")
    length = int.from_bytes(data[:8], "little")
    if length > MAX_HEADER:
        raise FormatError(f"safetensors header: length {length} exceeds {MAX_HEADER} bytes")
    if 8 + length > size:
        raise FormatError("safetensors header: longer than the file")
    try:
        header = json.loads(bytes(data[8 : 8 + length]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"safetensors header: not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError("safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("safetensors header: __metadata__ must map strings to strings")
    start = 8 + length
    region = size - start
    tensors = [_tensor(name, entry, region) for name, entry in header.items()]
    at = 0
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if t.begin != at:
            what = "overlaps another" if t.begin < at else "leaves a gap before it"
            raise FormatError(f"safetensors header: tensor {t.name!r} {what}")
        at = t.end
    if at != region:
        raise FormatError("safetensors header: the tensors do not cover the data region exactly")
    return start, tensors, metadata


def _tensor(name: str, entry: object, region: int) -> TensorInfo:
    where = f"safetensors header: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{where}: needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise FormatError(f"{where}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise FormatError(f"{where}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise FormatError(f"{where}: data_offsets must be two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= region:
        raise FormatError(f"{where}: data_offsets [{begin}, {end}] outside the data region")
    if math.prod(shape) * _DTYPES[dtype][0] != end - begin:
        raise FormatError(f"{where}: shape x itemsize does not match its {end - begin} bytes")
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def load(
    path: str | os.PathLike[str],
    identity: Identities,
    *,
    signer: Ed25519PublicKey | None = None,
    name: str | None = None,
    framework: Literal["numpy", "torch"] = "numpy",
) -> dict[str, Any]:
    """Tensors of the sealed ``.safetensors`` file (``name`` picks one in a folder), without copies."""
    if framework not in ("numpy", "torch"):
        raise UsageError(f"framework must be 'numpy' or 'torch', not {framework!r}")
    require("numpy", "safetensors")
    torch = require("torch", "torch") if framework == "torch" else None
    sealed = open_sealed(path, identity, signer=signer)
    try:
        chosen = pick(sealed.entries(), (".safetensors",), name, "safetensors file")
        start, tensors, _ = parse_header(sealed.read(chosen))
        if torch is None:
            unsupported = [t for t in tensors if _DTYPES[t.dtype][1] is None]
            if unsupported:
                raise UsageError(
                    f"numpy has no dtype for tensor {unsupported[0].name!r} ({unsupported[0].dtype}): "
                    "use framework='torch'"
                )
        flat = pinned_array(sealed, chosen, writable=torch is not None)
        result = {
            t.name: _numpy(flat, start, t) if torch is None else _torch(torch, flat, start, t)
            for t in tensors
        }
    except BaseException:
        sealed.close()
        raise
    # No close() here: the arrays own the SealedModel now (see _common._Pinned) and it is zeroized
    # when the last of them goes.
    return result


def _numpy(flat: Any, start: int, t: TensorInfo) -> Any:
    dtype = _DTYPES[t.dtype][1]
    return flat[start + t.begin : start + t.end].view(dtype).reshape(t.shape)


def _torch(torch: Any, flat: Any, start: int, t: TensorInfo) -> Any:
    dtype = getattr(torch, str(_DTYPES[t.dtype][2]))
    count = math.prod(t.shape)
    if count == 0:
        return torch.empty(t.shape, dtype=dtype)
    # frombuffer keeps `flat` (and through it the SealedModel) alive for the tensor's lifetime.
    return torch.frombuffer(flat, dtype=dtype, count=count, offset=start + t.begin).reshape(t.shape)
