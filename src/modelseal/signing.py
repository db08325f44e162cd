"""Owner signatures: Ed25519 over the parts of a sealed model that rewrap never changes.

The message is a label, the format version and the core bytes; the core holds the signer's public
key and the SHA-256 of the payload ciphertext, so the signature binds every payload byte and can be
checked by anyone holding the owner's public key, without any decryption key.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import SignatureError

_LABEL = b"modelseal/v1 signature\x00"


def generate_signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _message(version: int, core_bytes: bytes) -> bytes:
    return _LABEL + struct.pack(">H", version) + core_bytes


def sign_core(key: Ed25519PrivateKey, version: int, core_bytes: bytes) -> bytes:
    return key.sign(_message(version, core_bytes))


def check_signature(
    expected: Ed25519PublicKey, embedded_key: bytes, signature: bytes, version: int, core_bytes: bytes
) -> None:
    """Raise SignatureError unless ``expected`` signed this core."""
    if not embedded_key:
        raise SignatureError("signature check failed: the sealed model is not signed")
    if not hmac.compare_digest(raw_public(expected), embedded_key):
        raise SignatureError("signature check failed: the sealed model was signed by a different key")
    try:
        expected.verify(signature, _message(version, core_bytes))
    except InvalidSignature:
        raise SignatureError("signature check failed: the owner signature does not match") from None
