"""No plaintext written anywhere: real loads traced with strace, every write syscall inspected.

Two real loads of an ONNX model built here (a 512x512 float32 MatMul, ~1 MiB of random weights):

1. ``modelseal.open`` + ``runtimes.onnxruntime.load_session`` + an inference, in a child process;
2. ``modelseal cfs run MODEL -- python CHILD``, the child reading the model through $MODELSEAL_FILE.

Each runs under ``strace -f`` (threads and children included) tracing every write-family syscall,
the descriptor-to-descriptor copies (sendfile, splice, copy_file_range...) and every open. The test
fails if any write to a descriptor other than a memfd carries any 64-byte run of the model's
plaintext (so regular files, /dev/shm files, pipes and sockets all count), if any such write was too
long for strace to show whole, if a file outside /proc and /dev (and not /dev/shm) is opened for
writing, or if a copy syscall touches a file. A control run of a deliberately leaky child proves
the checker finds what it looks for; in the cfs run trace, the memfd fill itself is the positive
control (the plaintext is seen going into the memfd, and nowhere else).

Neither load may connect anywhere: every connect() (and every sendto/sendmsg naming an address) is
traced, and only unix sockets the caller named would be allowed (these loads name none). The children
run without ORT_DISABLE_TELEMETRY in their environment, so it is modelseal that switches ONNX
Runtime's telemetry off (it would otherwise write ~/.cache/Microsoft/... and try HTTPS uploads).

The children run with PYTHONDONTWRITEBYTECODE=1: Python's own .pyc cache writes are not plaintext,
but they would be files opened for writing, which this test refuses outright.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import modelseal

from .strace_check import WINDOW, Needle, Trace, fd_kind, parse, strace_command, writes_carrying

STRACE_STRING = 4 << 20  # > the model: whole buffers are printed (checked: nothing truncated)
SIDE = 512


def _need_strace(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (Debian package strace; `make system-deps`)")
    probe = subprocess.run(
        ["strace", "-f", "-o", str(tmp_path / "probe"), "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace refused?): {probe.stderr.strip()[:200]}")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1"}


def _traced(tmp_path: Path, name: str, argv: list[str], timeout: float = 300) -> tuple[Trace, str]:
    log = tmp_path / f"{name}.strace"
    r = subprocess.run(
        [*strace_command(log, STRACE_STRING), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_child_env(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, f"{name} failed ({r.returncode}): {r.stderr[-3000:]}"
    return parse(log), r.stdout


def _assert_nothing_leaked(
    trace: Trace, needle: Needle, what: str, *, read: Path, sockets: frozenset[str] = frozenset()
) -> None:
    # The trace covers the process that read the model (else it proves nothing).
    assert str(read) in {o.path for o in trace.opens if not o.writing}, f"{what}: {read} never opened"
    leaks = [w for w in writes_carrying(trace, needle) if fd_kind(w.fd_path) != "memfd"]
    assert not leaks, f"{what}: plaintext written by {[(w.pid, w.syscall, w.fd_path) for w in leaks]}"
    unreadable = [w for w in trace.writes if w.truncated and fd_kind(w.fd_path) != "memfd"]
    assert not unreadable, (
        f"{what}: writes too long to inspect: {[(w.syscall, w.fd_path) for w in unreadable]}"
    )
    unknown = [w for w in trace.writes if fd_kind(w.fd_path) == "unknown" and len(w.data) >= WINDOW]
    assert not unknown, f"{what}: writes to descriptors strace could not name: {len(unknown)}"
    written = sorted({o.path for o in trace.opens if o.writing and fd_kind(o.path) in ("file", "unknown")})
    assert not written, f"{what}: files opened for writing: {written}"
    assert not trace.moves, f"{what}: data copied between descriptors: {trace.moves[:3]}"
    outside = [(c.syscall, c.family, c.path) for c in trace.connects if c.path not in sockets]
    assert not outside, f"{what}: connections the caller did not ask for: {outside[:5]}"


def _onnx_model() -> tuple[bytes, Any, Any]:
    """(serialized model, weights, bias): y = x @ W + b, W of random float32 (the plaintext to trace)."""
    np = pytest.importorskip("numpy", reason="numpy not installed (extra: onnxruntime)")
    onnx = pytest.importorskip("onnx", reason="onnx not installed (extra: demo)")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    weights = rng.standard_normal((SIDE, SIDE)).astype(np.float32)
    bias = rng.standard_normal((SIDE,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "traced",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, SIDE])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, SIDE])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), weights, bias


@pytest.fixture
def sealed_onnx(tmp_path: Path) -> tuple[Path, Path, bytes, Any]:
    """The sealed model, its MEK file, its plaintext and the expected output for x = ones."""
    data, weights, bias = _onnx_model()
    plain = tmp_path / "model.onnx"
    plain.write_bytes(data)
    mek = tmp_path / "MEK.dat"
    modelseal.write_mek(modelseal.keygen(), mek)
    sealed = tmp_path / "model.onnx.mseal"
    modelseal.seal(plain, sealed, mek=modelseal.load_mek(mek))
    plain.unlink()  # only the sealed model is left to read
    return sealed, mek, data, weights.sum(axis=0) + bias


ORT_CHILD = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np
    import modelseal
    from modelseal.runtimes import onnxruntime as sealed_ort
    identity = modelseal.load_identity(sys.argv[2])
    with modelseal.open(sys.argv[1], identity) as model:
        digest = hashlib.sha256(model.read()).hexdigest()
    session = sealed_ort.load_session(sys.argv[1], identity, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": np.ones((1, SIDE), np.float32)})[0]
    print(json.dumps({"sha256": digest, "y": y.ravel().tolist()}))
    """
).replace("SIDE", str(SIDE))

CFS_CHILD = textwrap.dedent(
    """
    import hashlib, json, os
    with open(os.environ["MODELSEAL_FILE"], "rb") as f:
        data = f.read()
    print(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}))
    """
)


OPENVINO_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import modelseal
    from modelseal.runtimes import openvino as sealed_ov
    compiled = sealed_ov.compile_model(
        sys.argv[1], modelseal.load_identity(sys.argv[2]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    y = compiled(np.ones((1, SIDE), np.float32))[0]
    print(json.dumps({"y": np.asarray(y).ravel().tolist()}))
    """
).replace("SIDE", str(SIDE))

TORCH_CHILD = textwrap.dedent(
    """
    import json, sys
    import modelseal
    from modelseal.runtimes import torch as sealed_torch
    state = sealed_torch.load(sys.argv[1], modelseal.load_identity(sys.argv[2]))
    y = state["W"].sum(dim=0) + state["b"]
    print(json.dumps({"y": y.tolist()}))
    """
)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_loading_into_a_runtime_writes_and_connects_nothing(
    tmp_path: Path, sealed_onnx: tuple[Path, Path, bytes, Any], runtime: str
) -> None:
    """modelseal.open + an ONNX Runtime session, or an OpenVINO compile (whose ovc converter would
    start openvino-telemetry at import), and an inference each."""
    _need_strace(tmp_path)
    pytest.importorskip(runtime, reason=f"{runtime} not installed (extra: {runtime})")
    np = pytest.importorskip("numpy")
    sealed, mek, plaintext, expected = sealed_onnx
    child = {"onnxruntime": ORT_CHILD, "openvino": OPENVINO_CHILD}[runtime]
    trace, out = _traced(tmp_path, runtime, [sys.executable, "-c", child, str(sealed), str(mek)])
    report = json.loads(out)
    digest = hashlib.sha256(plaintext).hexdigest()
    assert report.get("sha256", digest) == digest  # the ONNX Runtime child also reports open()'s bytes
    np.testing.assert_allclose(np.array(report["y"]), expected, rtol=1e-4, atol=1e-3)
    _assert_nothing_leaked(trace, Needle(plaintext), f"loading into {runtime}", read=sealed)


def test_torch_load_writes_and_connects_nothing(tmp_path: Path) -> None:
    _need_strace(tmp_path)
    torch = pytest.importorskip("torch", reason="torch not installed (extra: torch)")
    np = pytest.importorskip("numpy")
    state = {"W": torch.randn(SIDE, SIDE), "b": torch.randn(SIDE)}
    plain = tmp_path / "weights.pt"
    torch.save(state, plain)
    plaintext = plain.read_bytes()
    mek = tmp_path / "MEK.dat"
    modelseal.write_mek(modelseal.keygen(), mek)
    sealed = tmp_path / "weights.pt.mseal"
    modelseal.seal(plain, sealed, mek=modelseal.load_mek(mek))
    plain.unlink()
    trace, out = _traced(tmp_path, "torch", [sys.executable, "-c", TORCH_CHILD, str(sealed), str(mek)])
    expected = (state["W"].sum(dim=0) + state["b"]).numpy()
    np.testing.assert_allclose(np.array(json.loads(out)["y"]), expected, rtol=1e-5, atol=1e-4)
    _assert_nothing_leaked(trace, Needle(plaintext), "torch load", read=sealed)


def test_cfs_run_writes_no_plaintext_outside_its_memfd(
    tmp_path: Path, sealed_onnx: tuple[Path, Path, bytes, Any]
) -> None:
    _need_strace(tmp_path)
    sealed, mek, plaintext, _ = sealed_onnx
    argv = [sys.executable, "-m", "modelseal", "cfs", "run", str(sealed), "-i", str(mek), "--"]
    trace, out = _traced(tmp_path, "cfs", [*argv, sys.executable, "-c", CFS_CHILD])
    report = json.loads(out)
    assert report == {"sha256": hashlib.sha256(plaintext).hexdigest(), "size": len(plaintext)}
    needle = Needle(plaintext)
    # Positive control: the trace does show plaintext, going into the sealed memfd and only there.
    into_memfd = [w for w in writes_carrying(trace, needle) if fd_kind(w.fd_path) == "memfd"]
    assert into_memfd, "the memfd fill was not seen: the trace cannot be trusted"
    assert all(not w.truncated for w in into_memfd)
    _assert_nothing_leaked(trace, needle, "cfs run", read=sealed)


def test_the_checker_catches_a_leaky_child(tmp_path: Path) -> None:
    """Negative control: a child that writes 100 bytes of a model to a file is caught both ways."""
    _need_strace(tmp_path)
    plaintext = os.urandom(1 << 16)
    (tmp_path / "secret").write_bytes(plaintext)
    leak = (
        "import sys; d = open(sys.argv[1], 'rb').read(); "
        "f = open(sys.argv[2], 'wb'); f.write(b'header' + d[1000:1100]); f.close()"
    )
    trace, _ = _traced(tmp_path, "leak", [sys.executable, "-c", leak, "secret", "leak.bin"])
    with pytest.raises(AssertionError, match="plaintext written"):
        _assert_nothing_leaked(trace, Needle(plaintext), "leaky child", read=tmp_path / "secret")
    assert [w.fd_path for w in writes_carrying(trace, Needle(plaintext))] == [str(tmp_path / "leak.bin")]
    assert str(tmp_path / "leak.bin") in {o.path for o in trace.opens if o.writing}
    # A 63-byte piece is below the window; a 64-byte piece at any offset is found.
    needle = Needle(plaintext)
    assert not needle.found_in(b"x" + plaintext[5:68] + b"y")
    assert all(needle.found_in(b"ab" + plaintext[k : k + WINDOW] + b"cd") for k in (0, 1, 31, 32, 33, 999))


def test_the_checker_catches_a_child_that_connects(tmp_path: Path) -> None:
    """Negative control for the connection check: TCP to loopback and a unix socket nobody named."""
    _need_strace(tmp_path)
    (tmp_path / "secret").write_bytes(os.urandom(1 << 12))
    dial = (
        "import socket, sys; open(sys.argv[1], 'rb').read()\n"
        "for family, address in ((socket.AF_INET, ('127.0.0.1', 9)), (socket.AF_UNIX, sys.argv[2])):\n"
        "    s = socket.socket(family)\n"
        "    try: s.connect(address)\n"
        "    except OSError: pass\n"
        "    s.close()\n"
    )
    sock = str(tmp_path / "agent.sock")
    trace, _ = _traced(tmp_path, "dial", [sys.executable, "-c", dial, "secret", sock])
    assert {(c.family, c.path) for c in trace.connects} == {("AF_INET", None), ("AF_UNIX", sock)}
    needle = Needle(os.urandom(WINDOW))
    with pytest.raises(AssertionError, match="connections the caller did not ask for"):
        _assert_nothing_leaked(trace, needle, "dialling child", read=tmp_path / "secret")
    with pytest.raises(AssertionError, match="AF_INET"):
        _assert_nothing_leaked(trace, needle, "dialler", read=tmp_path / "secret", sockets=frozenset({sock}))
