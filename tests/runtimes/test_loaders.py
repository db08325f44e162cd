"""What every loader shares: errors naming the extra, the CI no-skip rule, the plaintext scan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import modelseal
from modelseal.runtimes import onnxruntime, openvino, safetensors
from modelseal.runtimes import torch as sealed_torch

from .helpers import PlaintextScan

HERE = Path(__file__).parent


@pytest.mark.parametrize(
    ("missing", "extra", "call"),
    [
        ("onnxruntime", "onnxruntime", lambda p, i: onnxruntime.load_session(p, i)),
        ("openvino", "openvino", lambda p, i: openvino.read_model(p, i)),
        ("openvino", "openvino", lambda p, i: openvino.compile_model(p, i)),
        ("torch", "torch", lambda p, i: sealed_torch.load(p, i)),
        ("torch", "torch", lambda p, i: sealed_torch.load_state_dict(object(), p, i)),  # type: ignore[arg-type]
        ("numpy", "safetensors", lambda p, i: safetensors.load(p, i)),
        ("torch", "torch", lambda p, i: safetensors.load(p, i, framework="torch")),
    ],
)
def test_missing_runtime_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str, extra: str, call: Any
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` raise ImportError
    with pytest.raises(modelseal.RuntimeUnavailableError) as caught:
        call(tmp_path / "never-opened.mseal", modelseal.MEK(modelseal.keygen()))
    assert f"modelseal[{extra}]" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_scan_finds_a_leak(tmp_path: Path, plaintext_scan: PlaintextScan) -> None:
    plaintext = os.urandom(4096)
    original = tmp_path / "original.bin"
    original.write_bytes(plaintext)
    plaintext_scan.assert_absent(plaintext, [original])
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "leak.tmp").write_bytes(b"x" * 10_000 + plaintext[1000:3000] + b"y")
    with pytest.raises(AssertionError, match=r"leak\.tmp"):
        plaintext_scan.assert_absent(plaintext, [original])


SKIPPING = """
import pytest
np = pytest.importorskip("no_such_runtime_module", reason="no_such_runtime_module not installed")

def test_never_runs() -> None:
    pass
"""

SKIPPING_IN_TEST = """
import pytest

def test_skips() -> None:
    pytest.skip("runtime missing")

def test_passes() -> None:
    pass
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_ci_turns_skips_into_failures(tmp_path: Path, ci: str) -> None:
    (tmp_path / "conftest.py").write_text((HERE.parent / "ci_no_skip.py").read_text())
    (tmp_path / "test_collect.py").write_text(SKIPPING)
    (tmp_path / "test_call.py").write_text(SKIPPING_IN_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "CI": ci}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--continue-on-collection-errors",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    if ci:
        assert run.returncode == 1, run.stdout
        assert "1 failed, 1 passed, 1 error" in run.stdout, run.stdout  # the error: the module skip
        assert "CI=true" in run.stdout
    else:
        assert run.returncode == 0, run.stdout
        assert "1 passed, 2 skipped" in run.stdout, run.stdout
