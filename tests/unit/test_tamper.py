"""Every kind of tampering is rejected, and a rejected open() hands out no plaintext."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

import modelseal
from modelseal import memory
from modelseal.format.header import PREAMBLE_SIZE, TAG_SIZE

CHUNK = 4096
REJECTED = (modelseal.FormatError, modelseal.IntegrityError, modelseal.NoMatchingIdentityError)


@pytest.fixture
def sealed(tmp_path: Path, mek: bytes) -> tuple[bytes, bytes, int]:
    src = tmp_path / "m.bin"
    src.write_bytes(random.Random(1).randbytes(4 * CHUNK + 100))
    out = tmp_path / "m.mseal"
    modelseal.seal(
        src, out, [modelseal.generate_identity().recipient], mek=mek, chunk_size=CHUNK, header_room=0
    )
    return out.read_bytes(), mek, modelseal.inspect(out).header_length


def _try_open(path: Path, data: bytes, mek: bytes) -> BaseException | None:
    path.write_bytes(data)
    try:
        modelseal.open(path, modelseal.MEK(mek)).close()
    except modelseal.ModelSealError as e:
        return e
    return None


def test_every_header_bit_flip_is_rejected_before_any_chunk(
    tmp_path: Path,
    sealed: tuple[bytes, bytes, int],
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    data, mek, header_length = sealed
    path = tmp_path / "t.mseal"
    for bit in range(header_length * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        err = _try_open(path, bytes(flipped), mek)
        assert isinstance(err, REJECTED), f"bit {bit} accepted"
    assert decrypt_calls == [], "a chunk was decrypted despite a bad header"
    assert plain_buffers == [], "a plaintext buffer was allocated despite a bad header"


def test_header_flips_with_the_right_key_are_integrity_errors(
    tmp_path: Path, sealed: tuple[bytes, bytes, int]
) -> None:
    data, mek, _ = sealed
    path = tmp_path / "t.mseal"
    core_length = struct.unpack_from(">I", data, 16)[0]
    # Inside the MAC'd core (salt, chunk size, length, metadata, manifest) and inside the MAC itself.
    for offset in range(PREAMBLE_SIZE, PREAMBLE_SIZE + core_length + 32):
        flipped = bytearray(data)
        flipped[offset] ^= 0x80
        err = _try_open(path, bytes(flipped), mek)
        assert isinstance(err, modelseal.IntegrityError | modelseal.FormatError), offset


def test_changed_version_chunk_size_and_length_fields(
    tmp_path: Path, sealed: tuple[bytes, bytes, int]
) -> None:
    data, mek, _ = sealed
    path = tmp_path / "t.mseal"
    version = bytearray(data)
    struct.pack_into(">H", version, 8, 2)
    assert isinstance(_try_open(path, bytes(version), mek), modelseal.UnsupportedVersionError)
    core = PREAMBLE_SIZE
    chunk_size_at = core + 32 + 1
    length_at = chunk_size_at + 4
    for at, fmt, value in [
        (chunk_size_at, ">I", 2 * CHUNK),
        (length_at, ">Q", 4 * CHUNK),
        (length_at, ">Q", 4 * CHUNK + 101),
        (12, ">I", 8192),
    ]:
        changed = bytearray(data)
        struct.pack_into(fmt, changed, at, value)
        assert isinstance(
            _try_open(path, bytes(changed), mek), modelseal.IntegrityError | modelseal.FormatError
        )


def test_random_payload_bit_flips(
    tmp_path: Path, sealed: tuple[bytes, bytes, int], plain_buffers: list[memory.PlainBuffer]
) -> None:
    data, mek, header_length = sealed
    path = tmp_path / "t.mseal"
    rng = random.Random(7)
    for _ in range(10_000):
        bit = rng.randrange(header_length * 8, len(data) * 8)
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert isinstance(_try_open(path, bytes(flipped), mek), modelseal.IntegrityError), bit
    assert plain_buffers and all(b.closed for b in plain_buffers)


def _chunks(data: bytes, header_length: int) -> list[bytes]:
    payload = data[header_length:]
    step = CHUNK + TAG_SIZE
    return [payload[i : i + step] for i in range(0, len(payload), step)]


def test_truncation_extension_and_chunk_surgery(tmp_path: Path, sealed: tuple[bytes, bytes, int]) -> None:
    data, mek, hl = sealed
    path = tmp_path / "t.mseal"
    chunks = _chunks(data, hl)
    head = data[:hl]
    boundaries = [hl + i * (CHUNK + TAG_SIZE) for i in range(len(chunks) + 1)]
    variants: dict[str, bytes] = {}
    for b in [*boundaries[:-1], len(data)]:
        for delta in (-1, 0, 1):
            if 0 < b + delta < len(data):
                variants[f"truncated at {b + delta}"] = data[: b + delta]
    variants["one byte appended"] = data + b"\x00"
    variants["a whole chunk appended"] = data + chunks[0]
    variants["chunk deleted"] = head + b"".join(chunks[:1] + chunks[2:])
    variants["chunks swapped"] = head + b"".join([chunks[1], chunks[0], *chunks[2:]])
    variants["chunk duplicated"] = head + b"".join([chunks[0], chunks[0], *chunks[2:]])
    variants["last chunk replaced by a full one"] = head + b"".join([*chunks[:-1], chunks[0]])
    for name, candidate in variants.items():
        # Cutting into the header itself is a malformed header; anything after it fails authentication.
        expected = modelseal.FormatError if len(candidate) < hl else modelseal.IntegrityError
        assert isinstance(_try_open(path, candidate, mek), expected), name


def test_chunk_spliced_from_another_file_with_the_same_mek(
    tmp_path: Path, sealed: tuple[bytes, bytes, int]
) -> None:
    data, mek, hl = sealed
    src = tmp_path / "m.bin"  # same plaintext, same MEK, fresh salt
    other = tmp_path / "other.mseal"
    modelseal.seal(src, other, mek=mek, chunk_size=CHUNK, header_room=0)
    other_data = other.read_bytes()
    other_hl = modelseal.inspect(other).header_length
    ours, theirs = _chunks(data, hl), _chunks(other_data, other_hl)
    spliced = data[:hl] + b"".join([ours[0], theirs[1], *ours[2:]])
    assert isinstance(_try_open(tmp_path / "t.mseal", spliced, mek), modelseal.IntegrityError)


def test_wrong_key_fails_at_the_header(
    tmp_path: Path,
    sealed: tuple[bytes, bytes, int],
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    data, _, _ = sealed
    path = tmp_path / "t.mseal"
    path.write_bytes(data)
    for wrong in (
        modelseal.MEK(modelseal.keygen()),
        modelseal.generate_identity(),
        modelseal.Passphrase(b"x"),
    ):
        with pytest.raises(modelseal.NoMatchingIdentityError):
            modelseal.open(path, wrong)
    with pytest.raises(modelseal.NoMatchingIdentityError):
        modelseal.verify(path, modelseal.MEK(modelseal.keygen()))
    assert decrypt_calls == [] and plain_buffers == []


def test_stripped_signature_is_detected(tmp_path: Path, mek: bytes) -> None:
    src = tmp_path / "m.bin"
    src.write_bytes(b"weights" * 1000)
    owner = modelseal.generate_signer()
    modelseal.seal(src, tmp_path / "s.mseal", mek=mek, signer=owner)
    data = bytearray((tmp_path / "s.mseal").read_bytes())
    core_length = struct.unpack_from(">I", data, 16)[0]
    sig_at = PREAMBLE_SIZE + core_length + 32
    data[sig_at : sig_at + 64] = bytes(64)
    (tmp_path / "t.mseal").write_bytes(bytes(data))
    with pytest.raises(modelseal.SignatureError):
        modelseal.verify(tmp_path / "t.mseal", signer=owner.public_key())


def test_signed_digest_that_does_not_match_the_payload_releases_nothing(
    tmp_path: Path, mek: bytes, plain_buffers: list[memory.PlainBuffer]
) -> None:
    """Even a MEK holder with a valid signature over a core cannot pass off another payload."""
    import dataclasses

    from modelseal.format.header import parse_header
    from modelseal.header_auth import assemble
    from modelseal.signing import sign_core

    src = tmp_path / "m.bin"
    src.write_bytes(b"weights" * 3000)
    owner = modelseal.generate_signer()
    modelseal.seal(src, tmp_path / "s.mseal", mek=mek, signer=owner)
    data = (tmp_path / "s.mseal").read_bytes()
    header = parse_header(data[: modelseal.inspect(tmp_path / "s.mseal").header_length])
    core = dataclasses.replace(header.core, payload_digest=bytes(32))
    forged = assemble(mek, core, header.stanzas, header.header_length, sign_core(owner, 1, core.encode()))
    (tmp_path / "f.mseal").write_bytes(forged.encode() + data[header.header_length :])
    with pytest.raises(modelseal.SignatureError, match="not the one the owner signed"):
        modelseal.open(tmp_path / "f.mseal", modelseal.MEK(mek), signer=owner.public_key())
    assert plain_buffers and all(b.closed for b in plain_buffers)
    with pytest.raises(modelseal.SignatureError):
        modelseal.verify(tmp_path / "f.mseal", modelseal.MEK(mek), owner.public_key())
    modelseal.open(tmp_path / "f.mseal", modelseal.MEK(mek)).close()  # without a signer it is just a MEK file
