"""safetensors: strict header checks, zero-copy arrays, cross-checked with the safetensors package."""

from __future__ import annotations

import gc
import json
import struct
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelseal
from modelseal.runtimes import safetensors as sealed_st

from .helpers import PlaintextScan, Recorder, need, tamper

need("safetensors")
from safetensors.numpy import load_file as reference_load  # noqa: E402
from safetensors.numpy import save_file as reference_save  # noqa: E402


def _arrays() -> dict[str, Any]:
    rng = np.random.default_rng()  # unseeded: no other test or run writes the same bytes
    return {
        "embed.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "norm.bias": rng.standard_normal(48).astype(np.float16),
        "ids": rng.integers(-(2**40), 2**40, size=(3, 5), dtype=np.int64),
        "mask": rng.integers(0, 2, size=9).astype(np.bool_),
        "bytes": rng.integers(0, 255, size=13, dtype=np.uint8),  # odd size: later tensors unaligned
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "u16": rng.integers(0, 2**16, size=(2, 2), dtype=np.uint16),
    }


def _pinned_sealed(array: Any) -> modelseal.SealedModel:
    base = array
    while not hasattr(base, "_sealed"):
        base = base.base
    sealed = base._sealed
    assert isinstance(sealed, modelseal.SealedModel)
    return sealed


def test_numpy_matches_the_reference_and_copies_nothing(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes, plaintext_scan: PlaintextScan
) -> None:
    plain = tmp_path / "model.safetensors"
    reference_save(_arrays(), str(plain), metadata={"format": "np"})
    modelseal.seal(plain, tmp_path / "model.mseal", mek=mek)
    got = sealed_st.load(tmp_path / "model.mseal", identity)
    expected = reference_load(str(plain))
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)
        assert not got[name].flags.writeable
    # Every array views the one sealed mapping: no per-tensor copies.
    sealed = _pinned_sealed(got["embed.weight"])
    assert all(_pinned_sealed(a) is sealed for a in got.values() if a.size)
    plaintext_scan.assert_absent(plain.read_bytes(), [plain])


def test_arrays_keep_the_plaintext_alive_until_the_last_one_goes(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes
) -> None:
    plain = tmp_path / "model.safetensors"
    arrays = _arrays()
    reference_save(arrays, str(plain))
    modelseal.seal(plain, tmp_path / "model.mseal", mek=mek)
    got = sealed_st.load(tmp_path / "model.mseal", identity)
    kept = got["embed.weight"][3:5]
    sealed = weakref.ref(_pinned_sealed(kept))
    del got
    gc.collect()
    alive = sealed()
    assert alive is not None and not alive.closed
    del alive
    np.testing.assert_array_equal(kept, arrays["embed.weight"][3:5])
    del kept
    gc.collect()
    assert sealed() is None


def test_explicit_close_cannot_unmap_under_live_arrays(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes
) -> None:
    plain = tmp_path / "model.safetensors"
    reference_save(_arrays(), str(plain))
    modelseal.seal(plain, tmp_path / "model.mseal", mek=mek)
    got = sealed_st.load(tmp_path / "model.mseal", identity)
    _pinned_sealed(got["ids"]).close()
    # Zeroized, but still mapped: reading is safe and shows zeros rather than crashing.
    assert not got["ids"].any()


def test_torch_matches_the_reference_including_bfloat16(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes
) -> None:
    torch = need("torch")
    from safetensors.torch import load_file as torch_reference
    from safetensors.torch import save_file as torch_save

    tensors = {name: torch.from_numpy(a.copy()) for name, a in _arrays().items()}
    tensors["bf16"] = torch.randn(4, 6).to(torch.bfloat16)
    plain = tmp_path / "model.safetensors"
    torch_save(tensors, str(plain))
    modelseal.seal(plain, tmp_path / "model.mseal", mek=mek)
    got = sealed_st.load(tmp_path / "model.mseal", identity, framework="torch")
    expected = torch_reference(str(plain))
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert torch.equal(got[name], want), name
    with pytest.raises(modelseal.UsageError, match="framework='torch'"):
        sealed_st.load(tmp_path / "model.mseal", identity)


def _file(header: Any, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    encoded = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def _t(dtype: str, shape: list[Any], begin: Any, end: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


BAD = {
    "short": b"\x01\x00",
    "header_too_long": struct.pack("<Q", 100_000_001) + b"{}",
    "header_past_end": struct.pack("<Q", 50) + b"{}",
    "not_json": _file(None, raw_header=b"{nope"),
    "not_utf8": _file(None, raw_header=b'{"\xff": 1}'),
    "not_object": _file([1, 2]),
    "duplicate_key": _file(
        None,
        b"\0" * 8,
        raw_header=b'{"a":'
        + json.dumps(_t("F32", [2], 0, 8)).encode()
        + b',"a":'
        + json.dumps(_t("F32", [2], 0, 8)).encode()
        + b"}",
    ),
    "bad_dtype": _file({"a": _t("F128", [1], 0, 16)}, b"\0" * 16),
    "bad_shape": _file({"a": _t("F32", [-1], 0, 4)}, b"\0" * 4),
    "bool_shape": _file({"a": _t("F32", [True], 0, 4)}, b"\0" * 4),
    "float_offsets": _file({"a": _t("F32", [1], 0.0, 4)}, b"\0" * 4),
    "offsets_outside": _file({"a": _t("F32", [4], 0, 16)}, b"\0" * 8),
    "offsets_reversed": _file({"a": _t("U8", [0], 4, 0)}, b"\0" * 4),
    "size_mismatch": _file({"a": _t("F32", [3], 0, 8)}, b"\0" * 8),
    "overlap": _file({"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 4, 12)}, b"\0" * 12),
    "gap": _file({"a": _t("F32", [1], 0, 4), "b": _t("F32", [1], 8, 12)}, b"\0" * 12),
    "trailing": _file({"a": _t("F32", [1], 0, 4)}, b"\0" * 8),
    "extra_field": _file({"a": {**_t("F32", [1], 0, 4), "x": 1}}, b"\0" * 4),
    "metadata_not_strings": _file({"__metadata__": {"a": 1}}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_headers_are_refused(case: str) -> None:
    with pytest.raises(modelseal.FormatError, match="safetensors"):
        sealed_st.parse_header(BAD[case])


# Where we are stricter than the package: it reads `true` as 1 and 0.0 as 0, keeps the last of
# duplicate keys, ignores unknown fields and non-string metadata values.
LENIENT = {"bool_shape", "float_offsets", "metadata_not_strings", "duplicate_key", "extra_field"}


@pytest.mark.parametrize("case", sorted(set(BAD) - LENIENT))
def test_the_reference_refuses_them_too(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BAD[case])
    with pytest.raises(Exception):  # the package raises several types
        reference_load(str(path))


def test_a_malformed_header_inside_a_sealed_model(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes
) -> None:
    plain = tmp_path / "bad.safetensors"
    plain.write_bytes(BAD["overlap"])
    modelseal.seal(plain, tmp_path / "bad.mseal", mek=mek)
    with pytest.raises(modelseal.FormatError, match="overlaps"):
        sealed_st.load(tmp_path / "bad.mseal", identity)


def test_tampered_model_never_reaches_the_runtime(
    tmp_path: Path, identity: modelseal.MEK, mek: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "model.safetensors"
    reference_save(_arrays(), str(plain))
    modelseal.seal(plain, tmp_path / "model.mseal", mek=mek)
    tamper(tmp_path / "model.mseal")
    frombuffer, parse = Recorder(), Recorder()
    monkeypatch.setattr(np, "frombuffer", frombuffer)
    monkeypatch.setattr(sealed_st, "parse_header", parse)
    with pytest.raises(modelseal.IntegrityError):
        sealed_st.load(tmp_path / "model.mseal", identity)
    assert frombuffer.calls == [] and parse.calls == []
