"""Fixtures of the adversarial suite: hostile models, and counters proving what was never reached.

``decrypt_calls`` (payload chunks decrypted) comes from tests/conftest.py, as in tests/unit. These
add the other expensive or dangerous steps a hostile header must not reach: a plaintext buffer
allocated, an HPKE decryption, a scrypt run, a call to the vault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelseal.recipients import passphrase as passphrase_mod
from modelseal.recipients import x25519 as x25519_mod

from .forge import Sample, seal_sample


class CountingSuite:
    """Stands in for the x25519 recipient's HPKE suite and counts decryptions."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.decrypts = 0
        self.opened: list[bytes] = []  # the stanza bodies it was asked to open

    def encrypt(self, *args: Any, **kwargs: Any) -> bytes:
        return bytes(self.real.encrypt(*args, **kwargs))

    def decrypt(self, ciphertext: bytes, *args: Any, **kwargs: Any) -> bytes:
        self.decrypts += 1
        self.opened.append(bytes(ciphertext))
        return bytes(self.real.decrypt(ciphertext, *args, **kwargs))


@pytest.fixture
def hpke(monkeypatch: pytest.MonkeyPatch) -> CountingSuite:
    suite = CountingSuite(x25519_mod._SUITE)
    monkeypatch.setattr(x25519_mod, "_SUITE", suite)
    return suite


@pytest.fixture
def scrypt_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, int]]:
    """(salt, work factor) of every scrypt run (a hostile header may cost at most one bounded run)."""
    runs: list[tuple[bytes, int]] = []
    original = passphrase_mod._wrapping_key

    def counting(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
        runs.append((bytes(salt), log_n))
        return original(passphrase, salt, log_n)

    monkeypatch.setattr(passphrase_mod, "_wrapping_key", counting)
    return runs


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """MEK + X25519 (slot "2") + passphrase, signed, 4 KiB chunks: every stanza type and field."""
    return seal_sample(tmp_path_factory.mktemp("sample"), passphrase=b"correct horse", signed=True, slot="2")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "hostile.mseal"
