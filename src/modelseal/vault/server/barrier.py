"""The barrier: everything secret in the database is encrypted under a key derived from the root.

Storage is untrusted (docs/architecture.md): a stolen database file without the root key yields no
key material. Each ciphertext's AAD names its table, row and purpose, so a ciphertext copied into
another row (say, an old key version's material into a newer version) fails to decrypt instead of
silently changing which key is used.

The root is 32 bytes from one of three places: a key file (:class:`KeyFileBarrier`, the embedded
default), Shamir shares (``roots.shamir.ShamirBarrier``: starts sealed and unseals when the
threshold of shares arrived) or a PKCS#11 token (``roots.pkcs11``: the token decrypts the root at
start). All of them are a :class:`RootBarrier`: only keys derived from the root stay in memory. A
barrier may be *sealed* (nothing in memory): then every operation needing a secret raises
:class:`Unavailable`, which the API turns into 503.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...errors import KeyFileError
from ..errors import KeyServiceError, Unavailable

ROOT_KEY_SIZE = 32
_BLOB_VERSION = b"\x01"
_NONCE_SIZE = 12
_STORAGE_INFO = b"modelseal vault barrier v1 storage"
_HMAC_INFO = b"modelseal vault barrier v1 hmac"
_CHECK_INFO = b"modelseal vault barrier v1 key check"
KEY_CHECK_SIZE = 32


@runtime_checkable
class Barrier(Protocol):
    """What the store and the API need from a root of trust, whatever holds the root."""

    @property
    def sealed(self) -> bool: ...

    def seal(self) -> None:
        """Forget the root: from now on every secret operation raises Unavailable."""
        ...

    def encrypt(self, plaintext: bytes, *, table: str, row: str, purpose: str) -> bytes: ...

    def decrypt(self, blob: bytes, *, table: str, row: str, purpose: str) -> bytes: ...

    def hmac(self, purpose: str, data: bytes) -> bytes:
        """A keyed digest for the audit trail: correlates secrets without revealing them."""
        ...


@runtime_checkable
class Unsealable(Protocol):
    """A barrier that the API can unseal from shares (POST /v1/sys/unseal)."""

    def submit_share(self, text: str, source: str = "") -> dict[str, object]:
        """Take one share from ``source`` (a client address); answers ``{"sealed": true, "progress":
        n, "threshold": t}`` until the threshold of distinct shares unseals the barrier, then
        ``{"sealed": false}``."""
        ...

    def unseal_status(self) -> dict[str, object]: ...


def _field(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def storage_aad(table: str, row: str, purpose: str) -> bytes:
    # Length-prefixed so ("a", "bc") and ("ab", "c") can never produce the same AAD.
    return b"modelseal vault barrier v1" + _field(table) + _field(row) + _field(purpose)


def _derive(root: bytes | bytearray, info: bytes) -> bytes:
    # HKDF takes any bytes-like input, so a caller can pass a bytearray root and wipe it afterwards.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(root)


def key_check(root: bytes | bytearray, vault_id: str) -> bytes:
    """A value stored at init that tells whether a reconstructed root is this vault's root.

    It is an HMAC under a key derived from the root (never the root itself), bound to the vault id,
    so it reveals nothing about the root and a root of another vault cannot match it.
    """
    check_key = _derive(root, _CHECK_INFO)
    return hmac.new(
        check_key, b"modelseal vault root key check v1" + _field(vault_id), hashlib.sha256
    ).digest()


def matches_key_check(root: bytes | bytearray, vault_id: str, expected: bytes) -> bool:
    return hmac.compare_digest(key_check(root, vault_id), expected)


class RootBarrier:
    """A barrier over a 32-byte root; keeps only keys derived from it, never the root itself."""

    def __init__(self, root: bytes | bytearray | None) -> None:
        self._lock = threading.Lock()
        self._storage: AESGCM | None = None
        self._hmac_key: bytes | None = None
        if root is not None:
            self.unseal(root)

    def unseal(self, root: bytes | bytearray) -> None:
        if len(root) != ROOT_KEY_SIZE:
            raise KeyFileError(f"a vault root key is {ROOT_KEY_SIZE} bytes")
        with self._lock:
            self._storage = AESGCM(_derive(root, _STORAGE_INFO))
            self._hmac_key = _derive(root, _HMAC_INFO)

    @property
    def sealed(self) -> bool:
        return self._storage is None

    def seal(self) -> None:
        with self._lock:
            self._storage = None
            self._hmac_key = None

    def _cipher(self) -> AESGCM:
        cipher = self._storage
        if cipher is None:
            raise Unavailable("the vault is sealed")
        return cipher

    def encrypt(self, plaintext: bytes, *, table: str, row: str, purpose: str) -> bytes:
        nonce = os.urandom(_NONCE_SIZE)
        sealed = self._cipher().encrypt(nonce, plaintext, storage_aad(table, row, purpose))
        return _BLOB_VERSION + nonce + sealed

    def decrypt(self, blob: bytes, *, table: str, row: str, purpose: str) -> bytes:
        cipher = self._cipher()
        if len(blob) < 1 + _NONCE_SIZE + 16 or blob[:1] != _BLOB_VERSION:
            raise KeyServiceError(f"stored secret for {table}/{row} is malformed")
        nonce, sealed = blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
        try:
            return cipher.decrypt(nonce, sealed, storage_aad(table, row, purpose))
        except InvalidTag:
            raise KeyServiceError(
                f"stored secret for {table}/{row} fails authentication (wrong root key or tampered row)"
            ) from None

    def hmac(self, purpose: str, data: bytes) -> bytes:
        key = self._hmac_key
        if key is None:
            raise Unavailable("the vault is sealed")
        return hmac.new(key, _field(purpose) + data, hashlib.sha256).digest()


class KeyFileBarrier(RootBarrier):
    """A barrier whose root is 32 random bytes in a file (mode 0600), the embedded default."""

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyFileBarrier:
        return cls(read_root_key(path))


def create_root_key(path: str | os.PathLike[str]) -> None:
    """Write a fresh root key, 0600 from its first byte; refuses to overwrite one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists: refusing to replace a vault root key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(ROOT_KEY_SIZE))
        f.flush()
        os.fsync(f.fileno())


def read_root_key(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read vault root key {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"vault root key {path} is readable by others: chmod 600 it")
    if len(data) != ROOT_KEY_SIZE:
        raise KeyFileError(f"vault root key {path} must hold exactly {ROOT_KEY_SIZE} bytes")
    return data
