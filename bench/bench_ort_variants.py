"""ONNX Runtime single-file loader variants, each against the plaintext path load in the same run.

- ``plain InferenceSession(path)``: the baseline (ORT reads the page-cached .onnx);
- ``sealed load_session``: what the loader does (decrypt into a private anonymous mapping, large
  initializers handed over in place through ``add_external_initializers``, the small rest of the
  graph as bytes; zeroize + free on a helper thread after return);
- ``  + wait for the zeroize``: the same, with the zeroize + free on the caller's path;
- ``  previous: memfd + /proc/self/fd``: the previous route (decrypt into a frozen memfd whose pages
  a helper thread maps in ahead of the decryption; ORT reads /proc/self/fd/N), reached by making
  the loader believe it cannot fill a bytes object in place;
- ``  decrypt only (open)``: ``modelseal.open`` into a private mapping, no ORT at all.

Same method as bench_runtimes.py (alternating runs, idle wait, fresh-memory write before each run).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from _benchutil import MiB, machine
from bench_runtimes import DIM, alternate, build_onnx, join_zeroizers, report

import modelseal
from modelseal.runtimes import _pybytes
from modelseal.runtimes import onnxruntime as sealed_ort


def waited(sealed: Path, identity: modelseal.MEK) -> Any:
    session = sealed_ort.load_session(sealed, identity)
    join_zeroizers()
    return session


def previous(sealed: Path, identity: modelseal.MEK) -> Any:
    with mock.patch.object(_pybytes, "supported", lambda: False):
        return sealed_ort.load_session(sealed, identity)


def decrypt_only(sealed: Path, identity: modelseal.MEK) -> None:
    modelseal.open(sealed, identity).close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--mb", type=int, default=208, help="ONNX model size (>= 200 for the target)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the model (default: temp)")
    args = parser.parse_args()

    import onnxruntime as ort

    print(f"# bench_ort_variants: {machine()}\nonnxruntime {ort.__version__}")
    mek = modelseal.keygen()
    identity = modelseal.MEK(mek)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain = Path(tmp) / "model.onnx"
        size = build_onnx(plain, args.mb)
        sealed = Path(tmp) / "model.mseal"
        modelseal.seal(plain, sealed, mek=mek)
        x = {"x": np.ones((1, DIM), np.float32)}
        expected = ort.InferenceSession(str(plain)).run(None, x)[0]
        for variant in (sealed_ort.load_session, previous):
            np.testing.assert_allclose(variant(sealed, identity).run(None, x)[0], expected, rtol=1e-5)
        contenders: dict[str, Callable[[], Any]] = {
            "plain InferenceSession(path)": functools.partial(ort.InferenceSession, str(plain)),
            "sealed load_session": functools.partial(sealed_ort.load_session, sealed, identity),
            "  + wait for the zeroize": functools.partial(waited, sealed, identity),
            "  previous: memfd + /proc/self/fd": functools.partial(previous, sealed, identity),
            "  decrypt only (open)": functools.partial(decrypt_only, sealed, identity),
        }
        times = alternate(args.reps, contenders, touch=size + 64 * MiB)
        report("ONNX Runtime single-file load variants", size, times, "plain InferenceSession(path)", 1.15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
