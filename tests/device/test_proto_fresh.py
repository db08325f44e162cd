"""The committed protobuf modules are exactly what the .proto files generate (no hand edits, no drift)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PROTOS = ("modelseal/keyrelease/report.proto", "modelseal/device/attestation.proto")


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")
    for proto in PROTOS:
        (tmp_path / proto).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SRC / proto, tmp_path / proto)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--pyi_out=.", *PROTOS],
        cwd=tmp_path, check=True,
    )
    for proto in PROTOS:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            name = proto.removesuffix(".proto") + suffix
            assert (tmp_path / name).read_bytes() == (SRC / name).read_bytes(), name
