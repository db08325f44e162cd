"""The key-release wire protocol, shared by the vault and the device: MAC input and HPKE info.

Both sides must build exactly the same bytes, so the encoding lives in one place and is fixed:
every field is ``u32be(len) || value`` (length-prefixed, so no two field lists share an encoding),
text is UTF-8, binary fields are the *decoded* bytes (so base64 variants can't change the MAC),
integers have a fixed width. A label with a version and a NUL starts each input, so a MAC or an
HPKE context made for one purpose can never be valid for another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time

from cryptography.hazmat.primitives import hpke

# The domain (tenant) a device or key belongs to when a request names none.
DEFAULT_DOMAIN = "default"
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


# --- attestation-based release (attestation.py) ----------------------------------------------------
ATTEST_INFO_LABEL = b"modelseal vault attested release hpke v1\x00"
ATTEST_NONCE_SIZE = 32


def attest_hpke_info(
    *, domain: str, device: str, key_name: str, key_version: int, nonce_digest: bytes
) -> bytes:
    """Binds an attested release to its request, like ``hpke_info`` but under its own label.

    The nonce enters as its SHA-256 (``nonce_digest``): that is what the device's signed report
    carries and all the vault keeps; the card recomputes it from the nonce it attested.
    """
    return ATTEST_INFO_LABEL + b"".join(
        _field(v)
        for v in (
            domain.encode(),
            device.encode(),
            key_name.encode(),
            struct.pack(">I", key_version),
            nonce_digest,
        )
    )


# --- device-authenticated requests (lease check, model repository) -------------------------------
# A device proves its PSK on a plain request with five headers; the MAC covers the method, the path
# as sent and the SHA-256 of the exact body bytes, so a captured header set is good for that one
# request only (and, with the nonce, only once).

DEVICE_LABEL = b"modelseal vault device request v1\x00"
DEVICE_HEADERS = (
    "x-modelseal-domain",
    "x-modelseal-device",
    "x-modelseal-timestamp",
    "x-modelseal-nonce",
    "x-modelseal-mac",
)
_DEVICE_HEADER_NAMES = (
    "X-Modelseal-Domain",
    "X-Modelseal-Device",
    "X-Modelseal-Timestamp",
    "X-Modelseal-Nonce",
    "X-Modelseal-Mac",
)


def device_request_input(
    *, domain: str, device: str, method: str, path: str, body: bytes, timestamp: int, nonce: bytes
) -> bytes:
    return DEVICE_LABEL + b"".join(
        _field(v)
        for v in (
            domain.encode(),
            device.encode(),
            method.upper().encode("ascii"),
            path.encode(),
            hashlib.sha256(body).digest(),
            struct.pack(">Q", timestamp),
            nonce,
        )
    )


def device_headers(
    psk: bytes, *, domain: str, device: str, method: str, path: str, body: bytes = b""
) -> dict[str, str]:
    """The five headers that authenticate one request of ``device`` (fresh nonce and timestamp)."""
    nonce = os.urandom(NONCE_MIN)
    timestamp = int(time.time())
    tag = mac(
        psk,
        device_request_input(
            domain=domain,
            device=device,
            method=method,
            path=path,
            body=body,
            timestamp=timestamp,
            nonce=nonce,
        ),
    )
    b64 = base64.b64encode
    values = (domain, device, str(timestamp), b64(nonce).decode(), b64(tag).decode())
    return dict(zip(_DEVICE_HEADER_NAMES, values, strict=True))
