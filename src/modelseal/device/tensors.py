"""Tensors on the wire: raw little-endian C-order bytes with a numpy dtype name and a shape.

Only plain numeric dtypes cross: an object dtype would need pickle, which a card must never load.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from . import attestation_pb2 as pb

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "float32", "float64"}
)


def encode(name: str, value: npt.ArrayLike) -> pb.Tensor:
    import numpy as np

    array = np.asarray(value)
    if array.dtype.name not in DTYPES:
        raise UsageError(f"tensor {name!r} has dtype {array.dtype.name}, which cannot be sent (numeric only)")
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return pb.Tensor(name=name, dtype=array.dtype.name, shape=list(array.shape), data=data)


def decode(tensor: pb.Tensor) -> np.ndarray[Any, Any]:
    import numpy as np

    if tensor.dtype not in DTYPES:
        raise UsageError(f"tensor {tensor.name!r}: unsupported dtype {tensor.dtype!r}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise UsageError(f"tensor {tensor.name!r}: negative dimension in shape {list(shape)}")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    if math.prod(shape) * dtype.itemsize != len(tensor.data):
        raise UsageError(
            f"tensor {tensor.name!r}: {len(tensor.data)} bytes do not fill shape {list(shape)}"
            f" of {tensor.dtype}"
        )
    array: np.ndarray[Any, Any] = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)
