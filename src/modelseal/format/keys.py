"""Key schedule: every key used on a sealed model is derived from the file key with HKDF-SHA256.

The file key is the MEK (16 or 32 bytes). The payload, header-MAC and manifest keys also take the
file's random salt, so a MEK reused across models never reuses a (key, nonce) pair. The stanza-MAC
key takes no salt: whoever holds the MEK can authenticate a recipient stanza without seeing the file
(the `wrap-mek` / `replace-mek` flow).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import KeyFileError
from .header import MAC_SIZE, Stanza

FILE_KEY_SIZES = (16, 32)
_PAYLOAD_INFO = b"modelseal/v1 payload"
_HEADER_INFO = b"modelseal/v1 header"
_MANIFEST_INFO = b"modelseal/v1 manifest"
_STANZA_INFO = b"modelseal/v1 stanza"
_KEY_ID_INFO = b"modelseal/v1 key id"
_STANZA_MAC_LABEL = b"modelseal/v1 stanza\x00"


def _hkdf(file_key: bytes, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(file_key)


def check_file_key(file_key: bytes) -> None:
    if len(file_key) not in FILE_KEY_SIZES:
        raise KeyFileError(f"a file key (MEK) must be 16 or 32 bytes, not {len(file_key)}")


@dataclass(frozen=True)
class FileKeys:
    payload: bytes
    header: bytes
    manifest: bytes


def derive_file_keys(file_key: bytes, salt: bytes) -> FileKeys:
    check_file_key(file_key)
    return FileKeys(
        payload=_hkdf(file_key, salt, _PAYLOAD_INFO),
        header=_hkdf(file_key, salt, _HEADER_INFO),
        manifest=_hkdf(file_key, salt, _MANIFEST_INFO),
    )


def header_mac(header_key: bytes, preamble_and_core: bytes) -> bytes:
    return hmac.new(header_key, preamble_and_core, sha256).digest()


def header_mac_ok(header_key: bytes, preamble_and_core: bytes, mac: bytes) -> bool:
    return hmac.compare_digest(header_mac(header_key, preamble_and_core), mac)


def stanza_mac_key(file_key: bytes) -> bytes:
    check_file_key(file_key)
    return _hkdf(file_key, None, _STANZA_INFO)


def authenticate_stanza(file_key: bytes, stanza: Stanza) -> Stanza:
    """Return the stanza with its MAC, computed from the file key alone."""
    mac = hmac.new(stanza_mac_key(file_key), _STANZA_MAC_LABEL + stanza.encode_unauthenticated(), sha256)
    return Stanza(stanza.type, stanza.args, stanza.body, mac.digest())


def stanza_mac_ok(mac_key: bytes, stanza: Stanza) -> bool:
    expected = hmac.new(mac_key, _STANZA_MAC_LABEL + stanza.encode_unauthenticated(), sha256).digest()
    return len(stanza.mac) == MAC_SIZE and hmac.compare_digest(expected, stanza.mac)


def key_id(file_key: bytes) -> bytes:
    """A public 8-byte name for a MEK, so `inspect` can say which key file opens a model."""
    return _hkdf(file_key, None, _KEY_ID_INFO, 8)
