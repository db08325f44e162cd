"""Shared plumbing of the runtime loaders: lazy imports, picking a file, keeping plaintext alive."""

from __future__ import annotations

import importlib
import io
import os
import posixpath
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import RuntimeUnavailableError, UsageError
from ..format.manifest import ManifestEntry
from ..opening import SealedModel

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def _quiet_onnxruntime() -> None:
    # ONNX Runtime >= 1.32 records 1DS telemetry (a device id, host facts) in
    # ~/.cache/Microsoft/DeveloperTools and tries HTTPS uploads unless this is set before import.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def _quiet_openvino() -> None:
    # `import openvino` imports its model converter (ovc), which starts openvino-telemetry: it writes
    # ~/intel/{openvino_ga_cid,stats} and sends Google Analytics events unless ~/intel/openvino_telemetry
    # says no. Marking the package absent makes ovc fall back to its own no-op stub; modelseal never
    # converts models, and the runtime itself sends nothing.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


# Run before a runtime is first imported through modelseal; a setting the user made is left alone.
_BEFORE_IMPORT = {"onnxruntime": _quiet_onnxruntime, "openvino": _quiet_openvino}


def require(module: str, extra: str) -> ModuleType:
    """Import an optional runtime (with its phone-home switched off), or say which extra provides it."""
    if module not in sys.modules and module in _BEFORE_IMPORT:
        _BEFORE_IMPORT[module]()
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeUnavailableError(module, extra) from None


def pick(entries: Iterable[ManifestEntry], suffixes: tuple[str, ...], name: str | None, what: str) -> str:
    """The file to load: ``name`` if given, else the only file with one of ``suffixes``."""
    entries = list(entries)
    names = [e.name for e in entries]
    if name is not None:
        if name not in names:
            raise UsageError(f"no file named {name!r} in this sealed model")
        return name
    if len(entries) == 1:
        return names[0]
    found = [n for n in names if n.lower().endswith(suffixes)]
    if len(found) != 1:
        kinds = "/".join(suffixes)
        raise UsageError(
            f"this sealed folder holds {len(found)} {kinds} files: name the {what} to load (model=...)"
        )
    return found[0]


def relative_to_folder(name: str, folder: str) -> str | None:
    """``name`` as seen from ``folder`` (both manifest paths), or None if it lies elsewhere."""
    if not folder:
        return name
    prefix = folder.rstrip("/") + "/"
    return name[len(prefix) :] if name.startswith(prefix) else None


def sibling(name: str, new_suffix: str) -> str:
    stem, _ = posixpath.splitext(name)
    return stem + new_suffix


class _Pinned:
    """Exposes one file's plaintext to numpy while keeping its SealedModel alive.

    numpy makes the object providing ``__array_interface__`` the ``.base`` of the array (and of
    every view sliced from it), so the chain array -> _Pinned -> SealedModel keeps the mapping open
    exactly as long as some array, or a torch tensor made by frombuffer over one, still exists;
    the SealedModel is zeroized when the last one goes. ``_export`` holds a buffer export on the
    window: even an explicit close() then zeroizes but cannot unmap memory under a live array.
    """

    def __init__(self, sealed: SealedModel, name: str, writable: bool) -> None:
        import numpy as np

        self._sealed = sealed
        self._export = np.frombuffer(sealed.read(name), dtype=np.uint8)
        address, _ = self._export.__array_interface__["data"]
        self.__array_interface__ = {
            "version": 3,
            "shape": self._export.shape,
            "typestr": "|u1",
            # Writable only for runtimes that refuse read-only memory (OpenVINO's shared Tensor,
            # torch.frombuffer); they read the weights and never write them.
            "data": (address, not writable),
        }


def pinned_array(sealed: SealedModel, name: str, *, writable: bool = False) -> npt.NDArray[np.uint8]:
    """A uint8 array over the file ``name`` inside ``sealed`` (no copy) that keeps ``sealed`` alive."""
    import numpy as np

    return np.asarray(_Pinned(sealed, name, writable))


class ViewReader(io.RawIOBase):
    """A seekable binary file over a memoryview: readinto copies only what the caller asks for."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), len(self._view) - self._pos))
        out[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        start = min(self._pos, end)
        self._pos = max(self._pos, end)
        return bytes(self._view[start:end])

    def readall(self) -> bytes:
        return self.read(-1)
