"""Passphrase recipient: scrypt-derived wrapping key, AES-256-GCM wrap of the file key.

The work factor sits in the stanza and is bounded on read (2**MAX_LOG_N, 1 GiB of scrypt memory),
and a header may hold only one scrypt stanza, so a hostile file costs at most one bounded scrypt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import FormatError, UsageError
from ..format.header import Stanza
from ..format.keys import FILE_KEY_SIZES

STANZA_TYPE = "scrypt"
DEFAULT_LOG_N = 18
MIN_LOG_N = 10
MAX_LOG_N = 20  # 2**20 * 8 * 128 bytes = 1 GiB of scrypt memory at most
_SALT_SIZE = 16
_AAD = b"modelseal/v1 scrypt"
_NONCE = bytes(12)  # the wrapping key is unique per stanza (fresh salt)


def _wrapping_key(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    return Scrypt(salt=b"modelseal/v1 scrypt" + salt, length=32, n=1 << log_n, r=8, p=1).derive(passphrase)


@dataclass(frozen=True)
class Passphrase:
    """A passphrase as recipient and identity. ``log_n`` is the scrypt work factor used to seal."""

    passphrase: bytes = field(repr=False)
    log_n: int = DEFAULT_LOG_N

    def __post_init__(self) -> None:
        if not self.passphrase:
            raise UsageError("the passphrase is empty")
        if not MIN_LOG_N <= self.log_n <= MAX_LOG_N:
            raise UsageError(f"scrypt work factor must be within 2^{MIN_LOG_N}..2^{MAX_LOG_N}")

    def wrap(self, file_key: bytes) -> list[Stanza]:
        salt = os.urandom(_SALT_SIZE)
        body = AESGCM(_wrapping_key(self.passphrase, salt, self.log_n)).encrypt(_NONCE, file_key, _AAD)
        return [Stanza(STANZA_TYPE, (salt, bytes([self.log_n])), body)]

    def matches(self, stanza: Stanza) -> bool:
        return stanza.type == STANZA_TYPE

    def unwrap(self, stanzas: Sequence[Stanza]) -> Iterator[bytes]:
        mine = [s for s in stanzas if s.type == STANZA_TYPE]
        if len(mine) > 1:
            # Each attempt costs up to 2**MAX_LOG_N work before any MAC can be checked: one stanza
            # bounds what a hostile header can make us spend.
            raise FormatError("a sealed model may hold only one passphrase (scrypt) recipient")
        for stanza in mine:
            if len(stanza.args) != 2 or len(stanza.args[0]) != _SALT_SIZE or len(stanza.args[1]) != 1:
                raise FormatError("malformed scrypt recipient stanza")
            log_n = stanza.args[1][0]
            if not MIN_LOG_N <= log_n <= MAX_LOG_N:
                raise FormatError(f"scrypt work factor 2^{log_n} in the file is outside the allowed bound")
            if len(stanza.body) - 16 not in FILE_KEY_SIZES:
                raise FormatError("malformed scrypt recipient stanza body")
            key = _wrapping_key(self.passphrase, stanza.args[0], log_n)
            try:
                yield AESGCM(key).decrypt(_NONCE, stanza.body, _AAD)
            except InvalidTag:
                continue
