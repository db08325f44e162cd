"""The key-release wire protocol, shared by the vault and the device: MAC input and HPKE info.

Both sides must build exactly the same bytes, so the encoding lives in one place and is fixed:
every field is ``u32be(len) || value`` (length-prefixed, so no two field lists share an encoding),
text is UTF-8, binary fields are the *decoded* bytes (so base64 variants can't change the MAC),
integers have a fixed width. A label with a version and a NUL starts each input, so a MAC or an
HPKE context made for one purpose can never be valid for another.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hpke

PSK_SIZE = 32
MAC_SIZE = 32
NONCE_MIN, NONCE_MAX = 16, 64
PUBLIC_KEY_SIZE = 32
MAX_SKEW_SECONDS = 120
MAC_LABEL = b"modelseal vault release mac v1\x00"
INFO_LABEL = b"modelseal vault release hpke v1\x00"
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def mac_input(
    *,
    domain: str,
    device: str,
    key_name: str,
    key_version: int,
    wrapped: bytes,
    timestamp: int,
    nonce: bytes,
    ephemeral_public: bytes,
) -> bytes:
    return MAC_LABEL + b"".join(
        _field(v)
        for v in (
            domain.encode(),
            device.encode(),
            key_name.encode(),
            struct.pack(">I", key_version),
            wrapped,
            struct.pack(">Q", timestamp),
            nonce,
            ephemeral_public,
        )
    )


def mac(psk: bytes, message: bytes) -> bytes:
    return hmac.new(psk, message, hashlib.sha256).digest()


def hpke_info(*, domain: str, device: str, key_name: str, key_version: int, nonce: bytes) -> bytes:
    """Binds the sealed answer to this request: it opens only for the device, key and nonce asked."""
    return INFO_LABEL + b"".join(
        _field(v)
        for v in (domain.encode(), device.encode(), key_name.encode(), struct.pack(">I", key_version), nonce)
    )
