"""The committed protobuf module is exactly what the .proto generates (no hand edits, no drift)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")
    work = tmp_path / "modelseal" / "device"
    work.mkdir(parents=True)
    shutil.copy(SRC / "modelseal" / "device" / "attestation.proto", work)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--pyi_out=.",
         "modelseal/device/attestation.proto"],
        cwd=tmp_path, check=True,
    )
    for name in ("attestation_pb2.py", "attestation_pb2.pyi"):
        assert (work / name).read_bytes() == (SRC / "modelseal" / "device" / name).read_bytes(), name
