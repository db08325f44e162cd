"""Helpers shared by the runtime-loader tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from leaks import contains


def need(module: str) -> Any:
    """Import a runtime or skip (a failure in CI): the reason says which extra provides it."""
    extra = {"onnx": "demo", "skl2onnx": "demo", "sklearn": "demo", "safetensors": "safetensors (dev)"}
    return pytest.importorskip(module, reason=f"{module} not installed (extra: {extra.get(module, module)})")


# -- no plaintext in files -------------------------------------------------------------------


def distinctive(data: bytes) -> bytes:
    """64 bytes from the middle of a model (its weights), unlikely to occur anywhere by chance."""
    middle = len(data) // 2
    piece = data[middle : middle + 64]
    assert len(piece) == 64 and len(set(piece)) > 8, "model too small or too regular to trace"
    return piece


def _stats(roots: Iterable[Path]) -> dict[Path, tuple[int, int, int]]:
    """Every regular file under ``roots``: (inode, size, mtime in ns)."""
    found: dict[Path, tuple[int, int, int]] = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in {".git", "__pycache__"}]
            for name in names:
                path = Path(folder, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


class PlaintextScan:
    """Finds files created or changed since it was made that contain a slice of a model's plaintext.

    A snapshot rather than an mtime cut-off: the kernel stamps files with a coarse clock, and
    copies other tests made a moment earlier must not count.
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = sorted({Path(r).resolve() for r in roots if Path(r).is_dir()})
        self.before = _stats(self.roots)

    def assert_absent(self, plaintext: bytes, originals: Iterable[Path]) -> None:
        needle = distinctive(plaintext)
        exclude = {Path(p).resolve() for p in originals}
        changed = [
            p
            for p, st in _stats(self.roots).items()
            if self.before.get(p) != st and p.resolve() not in exclude
        ]
        leaks = [p for p in changed if contains(p, needle)]
        assert not leaks, f"plaintext of the model found in files: {leaks}"


def tamper(path: Path) -> None:
    """Flip one byte of the last payload chunk (its GCM tag): only decryption can notice."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


class Recorder:
    """Stands in for a runtime entry point and records every call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        raise AssertionError("the runtime was called")


@dataclass(frozen=True)
class TorchModels:
    """A small torch MLP and its exports, written once per session (the plaintext originals)."""

    root: Path
    onnx: Path  # single file
    onnx_external: Path  # folder: model.onnx + model.onnx_data
    state_dict: Path
    inputs: Any  # numpy float32 batch
    expected: Any  # the torch model's output on it
    module: Any
    make: Callable[[], Any]  # a fresh, differently initialized module of the same shape

    def originals(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file()]
