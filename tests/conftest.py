from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ci_no_skip import pytest_make_collect_report, pytest_runtest_makereport

import modelseal
from modelseal import memory
from modelseal.format.stream import PayloadCipher

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]  # hooks, found by name

# Tests import the runtimes directly too (to build models and compare): keep those imports as quiet
# as modelseal's own loaders make them (modelseal.runtimes._common), so a test run writes nothing in
# ~/.cache/Microsoft or ~/intel and sends nothing. Subprocesses get neither; the strace tests rely on it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


@pytest.fixture
def mek() -> bytes:
    return modelseal.keygen()


@pytest.fixture
def model_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "model.bin"
    return path, random_file(path, 3 * 4096 + 123)


@pytest.fixture
def model_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "folder"
    (root / "weights").mkdir(parents=True)
    contents = {
        "model.xml": b"<net>" + os.urandom(100) + b"</net>",
        "weights/model.bin": os.urandom(20_000),
        "empty.txt": b"",
        "tokenizer.json": b'{"a": 1}',
    }
    for name, data in contents.items():
        (root / name).write_bytes(data)
    return root, contents


@pytest.fixture
def decrypt_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts payload chunk decryptions, to prove header failures stop before any chunk."""
    calls: list[int] = []
    original: Callable[..., None] = PayloadCipher.decrypt_into

    def counting(self: PayloadCipher, index: int, ciphertext: memoryview, out: memoryview) -> None:
        calls.append(index)
        original(self, index, ciphertext, out)

    monkeypatch.setattr(PayloadCipher, "decrypt_into", counting)
    yield calls


@pytest.fixture
def plain_buffers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[memory.PlainBuffer]]:
    """Every plaintext buffer open() allocates (none for a hostile header; closed after a failure)."""
    made: list[memory.PlainBuffer] = []
    original = memory.PlainBuffer.__init__

    def recording(self: memory.PlainBuffer, size: int) -> None:
        original(self, size)
        made.append(self)

    monkeypatch.setattr(memory.PlainBuffer, "__init__", recording)
    yield made
