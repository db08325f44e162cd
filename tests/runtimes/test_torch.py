"""torch.load of sealed checkpoints: weights-only, the same tensors as the plaintext file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import modelseal
from modelseal.runtimes import torch as sealed_torch

from .helpers import PlaintextScan, Recorder, TorchModels, need, tamper

torch = need("torch")


def test_state_dict_round_trip(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    plaintext_scan: PlaintextScan,
) -> None:
    sealed = tmp_path / "weights.mseal"
    modelseal.seal(torch_models.state_dict, sealed, mek=mek)
    fresh = torch_models.make()
    result = sealed_torch.load_state_dict(fresh, sealed, identity)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        got = fresh(torch.from_numpy(torch_models.inputs))
    torch.testing.assert_close(got.numpy(), torch_models.expected, rtol=0, atol=0)

    state = sealed_torch.load(sealed, identity)
    plain = torch.load(torch_models.state_dict, weights_only=True)
    assert state.keys() == plain.keys()
    for key, value in plain.items():
        assert torch.equal(state[key], value)
    plaintext_scan.assert_absent(torch_models.state_dict.read_bytes(), torch_models.originals())


def test_reads_through_readinto_not_a_whole_copy(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelseal.runtimes._common import ViewReader

    sealed = tmp_path / "weights.mseal"
    modelseal.seal(torch_models.state_dict, sealed, mek=mek)
    sizes: list[int] = []
    original = ViewReader.read

    def read(self: ViewReader, size: int | None = -1) -> bytes:
        sizes.append(-1 if size is None else size)
        return original(self, size)

    monkeypatch.setattr(ViewReader, "read", read)
    sealed_torch.load(sealed, identity)
    total = torch_models.state_dict.stat().st_size
    assert all(0 <= n < total // 2 for n in sizes), sizes  # never the whole file in one bytes object


def test_refuses_pickled_code(tmp_path: Path, identity: modelseal.MEK, mek: bytes) -> None:
    plain = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "obj": pickle.loads}, plain)
    modelseal.seal(plain, tmp_path / "evil.mseal", mek=mek)
    with pytest.raises(modelseal.FormatError, match="not a weights-only torch checkpoint"):
        sealed_torch.load(tmp_path / "evil.mseal", identity)


def test_not_a_state_dict(tmp_path: Path, identity: modelseal.MEK, mek: bytes) -> None:
    plain = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], plain)
    modelseal.seal(plain, tmp_path / "list.mseal", mek=mek)
    with pytest.raises(modelseal.FormatError, match="not a state dict"):
        sealed_torch.load_state_dict(torch.nn.Linear(2, 1), tmp_path / "list.mseal", identity)


def test_picks_the_checkpoint_in_a_folder(
    tmp_path: Path, torch_models: TorchModels, identity: modelseal.MEK, mek: bytes
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.pt").write_bytes(torch_models.state_dict.read_bytes())
    modelseal.seal(folder, tmp_path / "folder.mseal", mek=mek)
    state = sealed_torch.load(tmp_path / "folder.mseal", identity)
    assert set(state) == set(torch_models.module.state_dict())


def test_tampered_model_never_reaches_the_runtime(
    tmp_path: Path,
    torch_models: TorchModels,
    identity: modelseal.MEK,
    mek: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sealed = tmp_path / "weights.mseal"
    modelseal.seal(torch_models.state_dict, sealed, mek=mek)
    tamper(sealed)
    load = Recorder()
    monkeypatch.setattr(torch, "load", load)
    with pytest.raises(modelseal.IntegrityError):
        sealed_torch.load_state_dict(torch_models.make(), sealed, identity)
    assert load.calls == []
