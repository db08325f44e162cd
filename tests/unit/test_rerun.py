"""Re-running is safe: adding a recipient that is already there changes nothing, and a device slot
is never taken over silently (so a later replace-mek for one device drops only that device's wrap)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import modelseal
from modelseal.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def qaic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """An encrypted model folder, its MEK and three cards' session keys (files without a device line)."""
    paths = {"mek": tmp_path / "MEK.dat", "dir": tmp_path / "encryptqpc"}
    assert run(capsys, "keygen", "-o", paths["mek"])[0] == 0
    (tmp_path / "program.qpc").write_bytes(os.urandom(20_000))
    assert run(capsys, "encrypt-model", "--qpc", tmp_path / "program.qpc", "--mek", paths["mek"],
               "--output-dir", paths["dir"])[0] == 0  # fmt: skip
    paths["model"] = paths["dir"] / "program.qpc.mseal"
    for n in range(3):
        code, out, _ = run(capsys, "identity", "-o", tmp_path / f"card{n}.key")
        assert code == 0
        (tmp_path / f"pub{n}.dat").write_text(out)
        paths[f"card{n}"], paths[f"pub{n}"] = tmp_path / f"card{n}.key", tmp_path / f"pub{n}.dat"
    return paths


def add_keys(capsys: pytest.CaptureFixture[str], q: dict[str, Path], *extra: str | Path) -> tuple[int, str]:
    code, _, err = run(
        capsys, "encrypt-with-session-keys", "--input-dir", q["dir"], "--mek", q["mek"], "--pub-keys", *extra
    )
    return code, err


def test_adding_the_same_session_key_again_changes_nothing(
    qaic: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_keys(capsys, qaic, qaic["pub0"])[0] == 0
    once = qaic["model"].read_bytes()
    for _ in range(5):
        code, err = add_keys(capsys, qaic, qaic["pub0"])
        assert code == 0 and "already a recipient, skipped" in err and "added 0 session key(s)" in err
    assert qaic["model"].read_bytes() == once  # not even rewritten
    assert len(modelseal.inspect(qaic["model"]).recipients) == 2  # the MEK's own stanza and device 0


def test_a_second_key_never_takes_an_occupied_slot_silently(
    qaic: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_keys(capsys, qaic, qaic["pub0"])[0] == 0
    before = qaic["model"].read_bytes()
    code, err = add_keys(capsys, qaic, qaic["pub1"])  # no device line: position 0, which card 0 holds
    assert code == 2 and "device slot 0 already holds another session key" in err and "--device" in err
    assert qaic["model"].read_bytes() == before
    assert add_keys(capsys, qaic, qaic["pub1"], "--device", "1")[0] == 0
    assert modelseal.inspect(qaic["model"]).devices == {
        label: slot for label, slot in modelseal.inspect(qaic["model"]).devices.items() if slot in ("0", "1")
    }
    assert sorted(modelseal.inspect(qaic["model"]).devices.values()) == ["0", "1"]
    # The same key again, now claiming another device: refused too (it would hold two slots).
    code, err = add_keys(capsys, qaic, qaic["pub1"], "--device", "2")
    assert code == 2 and "already a recipient as device 1" in err
    # card 0 reset: its new key replaces slot 0 only with --replace, and card 1 keeps its wrap.
    code, err = add_keys(capsys, qaic, qaic["pub2"], "--device", "0", "--replace")
    assert code == 0
    assert sorted(modelseal.inspect(qaic["model"]).devices.values()) == ["0", "1"]
    for card, opens in (("card0", False), ("card1", True), ("card2", True)):
        assert run(capsys, "verify", qaic["model"], "-i", qaic[card])[0] == (0 if opens else 5)


def test_replace_mek_for_one_device_keeps_the_others(
    qaic: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert add_keys(capsys, qaic, qaic["pub0"], qaic["pub1"])[0] == 0
    assert run(capsys, "wrap-mek", "--mek", qaic["mek"], "--pub-keys", qaic["pub2"], "--device", "0",
               "--output-dir", tmp_path / "wrapped")[0] == 0  # fmt: skip
    assert run(capsys, "replace-mek", "--encrypted-qpc", qaic["model"],
               "--wrapped-meks", tmp_path / "wrapped", "--output-dir", tmp_path / "new")[0] == 0  # fmt: skip
    new = tmp_path / "new" / qaic["model"].name
    for card, opens in (("card0", False), ("card1", True), ("card2", True)):
        assert run(capsys, "verify", new, "-i", qaic[card])[0] == (0 if opens else 5)


def test_inspect_shows_device_slots(qaic: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert add_keys(capsys, qaic, qaic["pub0"], qaic["pub1"], "--device", "7", "cam-b")[0] == 0
    code, out, _ = run(capsys, "inspect", qaic["model"])
    assert code == 0 and "(device 7)" in out and "(device cam-b)" in out
    code, out, _ = run(capsys, "inspect", qaic["model"], "--json")
    assert sorted(json.loads(out)["devices"].values()) == ["7", "cam-b"]
    code, _, err = run(capsys, "wrap-mek", "--mek", qaic["mek"], "--pub-keys", qaic["pub0"],
                       "--device", "1", "2", "--output-dir", qaic["dir"] / "w")  # fmt: skip
    assert code == 2 and "names 2 device(s) for 1" in err


def test_rewrap_skips_a_present_recipient_and_writes_nothing(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    alice = modelseal.generate_identity()
    modelseal.seal(model_file[0], tmp_path / "m.mseal", [alice.recipient], mek=mek)
    before = (tmp_path / "m.mseal").read_bytes()
    result = modelseal.rewrap(tmp_path / "m.mseal", modelseal.MEK(mek), add=[alice.recipient], in_place=True)
    assert result.skipped == [modelseal.x25519_recipient_string(alice.recipient)]
    assert (tmp_path / "m.mseal").read_bytes() == before
    result = modelseal.rewrap(
        tmp_path / "m.mseal", modelseal.MEK(mek), add=[modelseal.MEK(mek)], in_place=True
    )
    assert result.skipped == [f"mek:{modelseal.MEK(mek).key_id.hex()}"]
