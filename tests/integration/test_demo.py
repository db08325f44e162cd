"""`make demo` keeps working: the demo script runs end to end and its checks pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx", reason="the demo needs the 'demo' extra")
    env = {**os.environ, "MODELSEAL_DEMO_OUT": str(tmp_path / "out")}
    proc = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "outputs identical to the plaintext model's: True" in proc.stdout
    assert "app saw" in proc.stdout and "refused: integrity check failed" in proc.stdout
