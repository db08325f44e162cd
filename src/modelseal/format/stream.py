"""STREAM payload: AES-256-GCM chunks with nonce = 88-bit big-endian counter || last-chunk flag.

Chunk i of the plaintext (``chunk_size`` bytes, the last one shorter or empty) is stored as its
ciphertext followed by a 16-byte tag at payload offset ``i * (chunk_size + 16)``. Any chunk can be
decrypted alone; truncation, extension, reordering and duplication change a nonce and fail the tag.
This layer knows a key and chunk geometry, not files or headers.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError
from .header import TAG_SIZE, chunk_count

_LAST = b"\x01"
_NOT_LAST = b"\x00"


def chunk_nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (_LAST if last else _NOT_LAST)


class PayloadCipher:
    """Encrypts or decrypts single chunks of one payload, writing into caller-owned buffers."""

    def __init__(self, payload_key: bytes, chunk_size: int, payload_length: int) -> None:
        self._aead = AESGCM(payload_key)
        self.chunk_size = chunk_size
        self.payload_length = payload_length
        self.count = chunk_count(payload_length, chunk_size)

    def plain_length(self, index: int) -> int:
        if index < self.count - 1:
            return self.chunk_size
        return self.payload_length - (self.count - 1) * self.chunk_size

    def cipher_length(self, index: int) -> int:
        return self.plain_length(index) + TAG_SIZE

    def cipher_offset(self, index: int) -> int:
        """Offset of chunk ``index`` from the start of the payload."""
        return index * (self.chunk_size + TAG_SIZE)

    def encrypt_into(self, index: int, plaintext: memoryview, out: memoryview) -> None:
        self._aead.encrypt_into(chunk_nonce(index, index == self.count - 1), plaintext, None, out)

    def decrypt_into(self, index: int, ciphertext: memoryview, out: memoryview) -> None:
        try:
            self._aead.decrypt_into(chunk_nonce(index, index == self.count - 1), ciphertext, None, out)
        except InvalidTag:
            raise IntegrityError() from None
