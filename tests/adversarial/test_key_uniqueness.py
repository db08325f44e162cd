"""One MEK, many seals: every seal draws a fresh salt, so no AES-GCM (key, nonce) pair ever repeats.

Real ``modelseal.seal`` calls (two-chunk payload, tmpfs output) under one MEK. Every AES-GCM key
the sealer instantiates and every nonce it encrypts under are recorded at the AESGCM class itself
(payload chunks in format/stream.py, the manifest in format/manifest.py), so nothing is inferred from
how the code is meant to work. The header's salt is read back from each sealed file and the keys are
derived from it with the format's own ``derive_file_keys`` and checked against what was recorded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import modelseal
from modelseal.format import manifest as manifest_mod
from modelseal.format import stream as stream_mod
from modelseal.format.header import parse_header
from modelseal.format.keys import derive_file_keys, stanza_mac_key

from .forge import header_length


class _Recorder:
    def __init__(self) -> None:
        self.uses: list[tuple[bytes, bytes]] = []  # (key, nonce) of every encryption
        self.keys: list[bytes] = []


def _recording_aesgcm(recorder: _Recorder) -> Callable[[bytes], Any]:
    """An AESGCM factory (the Rust class cannot be subclassed) that records keys and nonces."""

    class RecordingAESGCM:
        def __init__(self, key: bytes) -> None:
            self._aead = AESGCM(key)
            self._key = bytes(key)
            recorder.keys.append(self._key)

        def encrypt(self, nonce: bytes, data: Any, associated_data: bytes | None) -> bytes:
            recorder.uses.append((self._key, bytes(nonce)))
            return self._aead.encrypt(nonce, data, associated_data)

        def encrypt_into(self, nonce: bytes, data: Any, associated_data: bytes | None, buf: Any) -> int:
            recorder.uses.append((self._key, bytes(nonce)))
            return self._aead.encrypt_into(nonce, data, associated_data, buf)

    return RecordingAESGCM


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()
    cls = _recording_aesgcm(rec)
    monkeypatch.setattr(stream_mod, "AESGCM", cls)
    monkeypatch.setattr(manifest_mod, "AESGCM", cls)
    return rec


@pytest.fixture
def shm() -> Iterator[Path]:
    """Outputs on tmpfs: seal() fsyncs, which a disk would turn into the whole cost of this test."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    folder = Path(tempfile.mkdtemp(prefix="modelseal-uniq-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _seal_many(count: int, folder: Path, recorder: _Recorder) -> None:
    src = folder / "m.bin"
    src.write_bytes(os.urandom(4096 + 100))  # two chunks: nonces (0, not last) and (1, last)
    out = folder / "m.mseal"
    mek = modelseal.keygen()
    salts: set[bytes] = set()
    payload_keys: set[bytes] = set()
    header_keys: set[bytes] = set()
    manifest_keys: set[bytes] = set()
    for i in range(count):
        before = len(recorder.keys)
        modelseal.seal(src, out, mek=mek, chunk_size=4096, header_room=0, overwrite=True)
        with out.open("rb") as f:
            head = f.read(4096)
        header = parse_header(head[: header_length(head)])
        keys = derive_file_keys(mek, header.core.salt)
        # What the sealer really keyed AES-GCM with is what the format derives from this salt.
        made = recorder.keys[before:]
        assert keys.manifest in made and keys.payload in made, f"seal {i}: unexpected AES-GCM keys"
        salts.add(header.core.salt)
        payload_keys.add(keys.payload)
        header_keys.add(keys.header)
        manifest_keys.add(keys.manifest)
    assert len(salts) == count, f"{count - len(salts)} repeated salts"
    assert len(payload_keys) == len(header_keys) == len(manifest_keys) == count
    # No key of one role is ever the key of another role (domain separation by the HKDF info).
    assert not (payload_keys & header_keys or payload_keys & manifest_keys or header_keys & manifest_keys)
    uses = recorder.uses
    assert len(uses) == 3 * count, "expected 2 payload chunks + 1 manifest per seal"
    assert len(set(uses)) == len(uses), "an AES-GCM (key, nonce) pair was used twice"
    # The unsalted keys are the same for every seal, by design (SPEC §2): stanza MACs and key ids.
    assert stanza_mac_key(mek) not in payload_keys | header_keys | manifest_keys


def test_10k_seals_with_one_mek_never_repeat_a_key_or_nonce(shm: Path, recorder: _Recorder) -> None:
    _seal_many(10_000, shm, recorder)


@pytest.mark.slow
def test_100k_seals_with_one_mek_never_repeat_a_key_or_nonce(shm: Path, recorder: _Recorder) -> None:
    _seal_many(100_000, shm, recorder)
