"""Rewrap and the qaic replace-mek flow change the header only; the payload is never re-encrypted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import modelseal


def _payload(path: Path) -> bytes:
    return path.read_bytes()[modelseal.inspect(path).header_length :]


def _wchar() -> int:
    """Bytes this process has passed to write()-like syscalls so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@pytest.fixture
def signed_model(tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes) -> tuple[Path, bytes]:
    src, data = model_file
    owner = modelseal.generate_signer()
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek, signer=owner, chunk_size=4096)
    (tmp_path / "owner.pub").write_text(modelseal.ed25519_public_string(owner.public_key()))
    return tmp_path / "m.mseal", data


def test_in_place_add_and_remove(tmp_path: Path, signed_model: tuple[Path, bytes], mek: bytes) -> None:
    path, data = signed_model
    before = _payload(path)
    owner = modelseal.load_signer_public(tmp_path / "owner.pub")
    alice, bob = modelseal.generate_identity(), modelseal.generate_identity()
    start = _wchar()
    result = modelseal.rewrap(path, modelseal.MEK(mek), add=[alice.recipient, bob.recipient], in_place=True)
    written = _wchar() - start
    # The header region (and its short-lived journal) is all that is written.
    assert written <= 2 * result.header_length + 128
    assert _payload(path) == before
    for identity in (alice, bob):
        with modelseal.open(path, identity, signer=owner) as m:
            assert bytes(m.read()) == data
    alice_string = modelseal.x25519_recipient_string(alice.recipient)
    modelseal.rewrap(path, bob, remove=[alice_string], in_place=True)
    with pytest.raises(modelseal.NoMatchingIdentityError):
        modelseal.open(path, alice)
    modelseal.verify(path, bob, owner)  # the owner signature survives every rewrap
    assert not list(tmp_path.glob(".*.rewrap-journal"))


def test_rewrap_to_new_file_copies_the_payload_bit_for_bit(
    tmp_path: Path, signed_model: tuple[Path, bytes], mek: bytes
) -> None:
    path, data = signed_model
    alice = modelseal.generate_identity()
    modelseal.rewrap(path, modelseal.MEK(mek), add=[alice.recipient], out=tmp_path / "new.mseal")
    assert _payload(tmp_path / "new.mseal") == _payload(path)
    with modelseal.open(tmp_path / "new.mseal", alice) as m:
        assert bytes(m.read()) == data
    with pytest.raises(modelseal.NoMatchingIdentityError):
        modelseal.open(path, alice)  # the input is untouched


def test_in_place_without_room_is_refused_and_a_new_file_grows_the_header(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, data = model_file
    path = tmp_path / "tight.mseal"
    modelseal.seal(src, path, mek=mek, header_room=0)
    original = path.read_bytes()
    many = [modelseal.generate_identity() for _ in range(60)]
    with pytest.raises(modelseal.HeaderRoomError, match="new file"):
        modelseal.rewrap(path, modelseal.MEK(mek), add=[i.recipient for i in many], in_place=True)
    assert path.read_bytes() == original
    result = modelseal.rewrap(
        path, modelseal.MEK(mek), add=[i.recipient for i in many], out=tmp_path / "big.mseal"
    )
    assert result.header_length > modelseal.inspect(path).header_length
    with modelseal.open(tmp_path / "big.mseal", many[-1]) as m:
        assert bytes(m.read()) == data


def test_rewrap_refuses_to_strand_a_model(tmp_path: Path, model_file: tuple[Path, bytes]) -> None:
    src, _ = model_file
    alice = modelseal.generate_identity()
    path = tmp_path / "m.mseal"
    modelseal.seal(src, path, [alice.recipient])
    with pytest.raises(modelseal.UsageError, match="no recipient"):
        modelseal.rewrap(path, alice, remove=["x25519"], in_place=True)
    with pytest.raises(modelseal.UsageError, match="matches"):
        modelseal.rewrap(path, alice, remove=["scrypt"], in_place=True)
    with pytest.raises(modelseal.UsageError):
        modelseal.rewrap(path, alice, in_place=True, out=tmp_path / "x")


def test_wrap_mek_then_replace_mek_without_the_mek(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, data = model_file
    cards = [modelseal.generate_identity() for _ in range(3)]
    encrypted = tmp_path / "enc" / "m.mseal"
    encrypted.parent.mkdir()
    sessions = [dataclasses.replace(c.recipient, slot=str(n)) for n, c in enumerate(cards)]
    modelseal.seal(src, encrypted, sessions, mek=mek)
    assert modelseal.inspect(encrypted).devices == {
        f"x25519:{s.fingerprint.hex()}": str(n) for n, s in enumerate(sessions)
    }
    # Cards 0 and 1 reset: new session keys; the owner wraps the MEK for them on a trusted machine.
    new_cards = [modelseal.generate_identity(), modelseal.generate_identity()]
    new_sessions = [dataclasses.replace(c.recipient, slot=str(n)) for n, c in enumerate(new_cards)]
    folders = modelseal.wrap_mek(modelseal.MEK(mek), new_sessions, tmp_path / "wrapped")
    assert [f.name for f in folders] == ["device0", "device1"]
    assert sorted(p.name for p in folders[0].iterdir()) == [
        "MEK.device",
        "MEK.encrypt",
        "MEK.nonce",
        "MEK.pub",
    ]
    config = json.loads((tmp_path / "wrapped" / "config.json").read_text())
    assert [d["device"] for d in config["devices"]] == ["0", "1"]
    # The untrusted host swaps them in with no MEK at all.
    wrapped = modelseal.load_wrapped_meks([tmp_path / "wrapped"])
    out = modelseal.replace_mek(encrypted, wrapped, tmp_path / "new")
    assert _payload(out) == _payload(encrypted)
    for card in [*new_cards, cards[2]]:  # card 2 was not reset: it keeps its wrap
        with modelseal.open(out, card) as m:
            assert bytes(m.read()) == data
    for card in cards[:2]:
        with pytest.raises(modelseal.NoMatchingIdentityError):
            modelseal.open(out, card)
    # Device folders can also be given one by one (MEK.device names the slot).
    one = modelseal.replace_mek(encrypted, modelseal.load_wrapped_meks([folders[1]]), tmp_path / "one")
    with modelseal.open(one, new_cards[1]) as m:
        assert bytes(m.read()) == data
    with pytest.raises(modelseal.NoMatchingIdentityError):
        modelseal.open(one, cards[1])
    with modelseal.open(one, cards[0]) as m:
        assert bytes(m.read()) == data


def test_wraps_without_a_device_replace_every_session_wrap(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, data = model_file
    old, new = modelseal.generate_identity(), modelseal.generate_identity()
    modelseal.seal(src, tmp_path / "m.mseal", [old.recipient], mek=mek)
    folder = modelseal.wrap_mek(modelseal.MEK(mek), [new.recipient], tmp_path / "w")[0]
    assert (folder / "MEK.device").read_text() == "0\n"
    out = modelseal.replace_mek(tmp_path / "m.mseal", modelseal.load_wrapped_meks([folder]), tmp_path / "o")
    with modelseal.open(out, new) as m:
        assert bytes(m.read()) == data
    # The old wrap had no slot, so a slotted wrap leaves it; a slot-less wrap set replaces it.
    with modelseal.open(out, old) as m:
        assert bytes(m.read()) == data
    (folder / "MEK.device").unlink()
    with pytest.raises(modelseal.IntegrityError):
        # Without its slot the stanza no longer matches the MAC the owner made: fail closed.
        modelseal.open(modelseal.replace_mek(out, modelseal.load_wrapped_meks([folder]), tmp_path / "p"), new)


def test_replace_mek_with_forged_or_foreign_wraps_fails_closed(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, _ = model_file
    encrypted = tmp_path / "m.mseal"
    modelseal.seal(src, encrypted, mek=mek)
    session = modelseal.generate_identity()
    folder = modelseal.wrap_mek(modelseal.MEK(mek), [session.recipient], tmp_path / "w")[0]
    tag = bytearray((folder / "MEK.nonce").read_bytes())
    tag[0] ^= 1
    (folder / "MEK.nonce").write_bytes(bytes(tag))
    out = modelseal.replace_mek(encrypted, modelseal.load_wrapped_meks([folder]), tmp_path / "o1")
    with pytest.raises(modelseal.IntegrityError):
        modelseal.open(out, session)
    # A wrap of another MEK (an attacker's) cannot make the model open to the attacker's key either.
    foreign = modelseal.wrap_mek(modelseal.MEK(modelseal.keygen()), [session.recipient], tmp_path / "f")[0]
    out = modelseal.replace_mek(encrypted, modelseal.load_wrapped_meks([foreign]), tmp_path / "o2")
    with pytest.raises(modelseal.IntegrityError):
        modelseal.open(out, session)


def test_replace_mek_refuses_wraps_of_another_mek_named_by_config(
    tmp_path: Path, model_file: tuple[Path, bytes], mek: bytes
) -> None:
    src, _ = model_file
    modelseal.seal(src, tmp_path / "m.mseal", mek=mek)
    session = modelseal.generate_identity()
    modelseal.wrap_mek(modelseal.MEK(modelseal.keygen()), [session.recipient], tmp_path / "other")
    with pytest.raises(modelseal.UsageError, match="another MEK"):
        modelseal.replace_mek(
            tmp_path / "m.mseal", modelseal.load_wrapped_meks([tmp_path / "other"]), tmp_path / "o"
        )
    assert not (tmp_path / "o" / "m.mseal").exists()


def test_device_slots_round_trip_and_config_must_agree(tmp_path: Path, mek: bytes) -> None:
    session = modelseal.generate_identity()
    long_slot = "d" * 64
    folder = modelseal.wrap_mek(
        modelseal.MEK(mek), [dataclasses.replace(session.recipient, slot=long_slot)], tmp_path / "w"
    )[0]
    (wrapped,) = modelseal.load_wrapped_meks([tmp_path / "w"])
    assert wrapped.device == long_slot
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    config["devices"][0]["device"] = "7"
    (tmp_path / "w" / "config.json").write_text(json.dumps(config))
    with pytest.raises(modelseal.KeyFileError, match=r"config\.json says device"):
        modelseal.load_wrapped_meks([tmp_path / "w"])
    assert folder.name == f"device{long_slot}"
    for bad in ("", " 2", "../x", "a/b", "x" * 65):
        with pytest.raises(modelseal.UsageError):
            dataclasses.replace(session.recipient, slot=bad)
