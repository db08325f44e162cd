"""Random access: any chunk decrypts alone, and only at its own position."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelseal
from modelseal.format.header import TAG_SIZE, parse_header
from modelseal.format.stream import PayloadCipher, chunk_nonce
from modelseal.header_auth import unlock

CHUNK = 4096


def test_nonce_layout() -> None:
    assert chunk_nonce(0, False) == bytes(12)
    assert chunk_nonce(1, True) == bytes(10) + b"\x01\x01"
    assert chunk_nonce(2**88 - 1, False) == b"\xff" * 11 + b"\x00"


def test_each_chunk_decrypts_alone(tmp_path: Path, mek: bytes) -> None:
    data = os.urandom(5 * CHUNK + 321)
    (tmp_path / "m.bin").write_bytes(data)
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek, chunk_size=CHUNK)
    sealed = (tmp_path / "m.mseal").read_bytes()
    header_length = modelseal.inspect(tmp_path / "m.mseal").header_length
    header = parse_header(sealed[:header_length])
    keys = unlock(header, modelseal.MEK(mek)).keys
    cipher = PayloadCipher(keys.payload, CHUNK, len(data))
    for index in reversed(range(cipher.count)):
        start = header_length + cipher.cipher_offset(index)
        ciphertext = memoryview(sealed[start : start + cipher.cipher_length(index)])
        out = bytearray(cipher.plain_length(index))
        cipher.decrypt_into(index, ciphertext, memoryview(out))
        assert bytes(out) == data[index * CHUNK : index * CHUNK + len(out)]
        if 0 < index < cipher.count - 1:
            # The same bytes presented as another chunk fail: position is authenticated.
            with pytest.raises(modelseal.IntegrityError):
                cipher.decrypt_into(index - 1, ciphertext[: CHUNK + TAG_SIZE], memoryview(bytearray(CHUNK)))
