"""Rewrap and the qaic replace-mek flow change the header only; the payload is never re-encrypted."""

from __future__ import annotations

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
    # The header region (and its short-lived backup) is all that is written.
    assert written <= 2 * result.header_length
    assert _payload(path) == before
    for identity in (alice, bob):
        with modelseal.open(path, identity, signer=owner) as m:
            assert bytes(m.read()) == data
    alice_string = modelseal.x25519_recipient_string(alice.recipient)
    modelseal.rewrap(path, bob, remove=[alice_string], in_place=True)
    with pytest.raises(modelseal.NoMatchingIdentityError):
        modelseal.open(path, alice)
    modelseal.verify(path, bob, owner)  # the owner signature survives every rewrap
    assert not list(tmp_path.glob("*.header-backup"))


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
    old_session = modelseal.generate_identity()
    encrypted = tmp_path / "enc" / "m.mseal"
    encrypted.parent.mkdir()
    modelseal.seal(src, encrypted, [old_session.recipient], mek=mek)
    # Card reset: two new session keys; the owner wraps the MEK for them on a trusted machine.
    new_sessions = [modelseal.generate_identity(), modelseal.generate_identity()]
    folders = modelseal.wrap_mek(
        modelseal.MEK(mek), [s.recipient for s in new_sessions], tmp_path / "wrapped"
    )
    assert [sorted(p.name for p in f.iterdir()) for f in folders] == [
        ["MEK.encrypt", "MEK.nonce", "MEK.pub"]
    ] * 2
    assert (tmp_path / "wrapped" / "config.json").exists()
    # The untrusted host swaps them in with no MEK at all.
    wrapped = modelseal.load_wrapped_meks([tmp_path / "wrapped"])
    out = modelseal.replace_mek(encrypted, wrapped, tmp_path / "new")
    assert _payload(out) == _payload(encrypted)
    for session in new_sessions:
        with modelseal.open(out, session) as m:
            assert bytes(m.read()) == data
    with pytest.raises(modelseal.NoMatchingIdentityError):
        modelseal.open(out, old_session)
    # Device folders can also be given one by one.
    one = modelseal.replace_mek(encrypted, modelseal.load_wrapped_meks([folders[1]]), tmp_path / "one")
    with modelseal.open(one, new_sessions[1]) as m:
        assert bytes(m.read()) == data


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
