"""The body of a `vault` recipient stanza: a data key wrapped under one master key version.

    body = nonce (12) || AES-256-GCM(master key version, nonce, MEK, AAD)
    AAD  = b"modelseal vault wrap" || u16 len(name) || name (UTF-8) || u32 version

The AAD binds the body to the key name and version the stanza's args claim, so a body can't be
unwrapped under another key or version (which would let a retired version's body be replayed
under a live one, or one tenant's body under another's key).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..vault.errors import KeyServiceError

NONCE_SIZE = 12
DATA_KEY_SIZE = 32
WRAPPED_SIZE = NONCE_SIZE + DATA_KEY_SIZE + 16
_LABEL = b"modelseal vault wrap"


def wrap_aad(name: str, version: int) -> bytes:
    encoded = name.encode()
    return _LABEL + struct.pack(">H", len(encoded)) + encoded + struct.pack(">I", version)


def wrap(master: bytes, name: str, version: int, data_key: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(master).encrypt(nonce, data_key, wrap_aad(name, version))


def unwrap(master: bytes, name: str, version: int, body: bytes) -> bytes:
    if len(body) != WRAPPED_SIZE:
        raise KeyServiceError("the wrapped key has the wrong length", code="invalid_wrapped_key")
    try:
        return AESGCM(master).decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], wrap_aad(name, version))
    except InvalidTag:
        raise KeyServiceError(
            f"the wrapped key was not made by key {name!r} version {version}, or is corrupted",
            code="invalid_wrapped_key",
        ) from None
