"""Reading and writing key files: MEK.dat, X25519 identities and recipients, Ed25519 signer keys.

Text forms carry a 4-byte checksum so a mistyped recipient is an error, not a model sealed to
nobody: ``ms-x25519:`` / ``ms-ed25519:`` + base64url(key || SHA-256(prefix || key)[:4]).
Private keys are PKCS#8 PEM (interoperable with OpenSSL), written 0600 and atomically.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import os
import re
import string
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from .errors import KeyFileError, UsageError
from .fileio import atomic_write_bytes, exists_error, read_small_file
from .recipients import MEK, X25519Identity, X25519Recipient
from .recipients.x25519 import public_bytes

X25519_PREFIX = "ms-x25519:"
_DEVICE_COMMENT = "# device:"  # in a session public key file: the qaic device number it belongs to
ED25519_PREFIX = "ms-ed25519:"
MAX_KEY_FILE = 64 << 10
_PEM_PRIVATE = re.compile(rb"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----", re.S)
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)
_HEX = set(string.hexdigits.encode())
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _encode_text(prefix: str, key: bytes) -> str:
    check = sha256(prefix.encode() + key).digest()[:4]
    return prefix + base64.urlsafe_b64encode(key + check).decode().rstrip("=")


def _decode_text(prefix: str, text: str) -> bytes:
    body = text[len(prefix) :]
    if not _BASE64URL.fullmatch(body):
        raise KeyFileError(f"malformed {prefix.rstrip(':')} key string (characters outside base64url)")
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"malformed {prefix.rstrip(':')} key string") from None
    key, check = raw[:-4], raw[-4:]
    if len(key) != 32 or not hmac.compare_digest(sha256(prefix.encode() + key).digest()[:4], check):
        raise KeyFileError(f"malformed {prefix.rstrip(':')} key string (bad length or checksum: a typo?)")
    return key


def x25519_recipient_string(recipient: X25519Recipient) -> str:
    return _encode_text(X25519_PREFIX, public_bytes(recipient.public_key))


def ed25519_public_string(key: Ed25519PublicKey) -> str:
    return _encode_text(ED25519_PREFIX, key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    return read_small_file(path, MAX_KEY_FILE, "key file", KeyFileError)


def parse_mek(data: bytes) -> bytes | None:
    """MEK.dat: 32 or 64 hex digits (the seed's pseudo script writes hex), else 16 or 32 raw bytes."""
    stripped = data.strip()
    if len(stripped) in (32, 64) and set(stripped) <= _HEX:
        return bytes.fromhex(stripped.decode())
    if len(data) in (16, 32):
        return data
    return None


def load_mek(path: str | os.PathLike[str]) -> MEK:
    key = parse_mek(_read_key_file(path))
    if key is None:
        raise KeyFileError(f"{path} is not a MEK file (16 or 32 raw bytes, or 32 or 64 hex digits)")
    return MEK(key)


def _public_key(pem: bytes, path: str | os.PathLike[str]) -> PublicKeyTypes:
    try:
        return load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: unreadable public key") from None


def _private_key(data: bytes, path: str | os.PathLike[str]) -> X25519PrivateKey | Ed25519PrivateKey | None:
    block = _PEM_PRIVATE.search(data)
    if block is None:
        return None
    try:
        key = load_pem_private_key(block.group(0), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: unreadable private key") from None
    if not isinstance(key, X25519PrivateKey | Ed25519PrivateKey):
        raise KeyFileError(f"{path}: only X25519 identities and Ed25519 signer keys are supported")
    return key


def load_identity(path: str | os.PathLike[str]) -> MEK | X25519Identity:
    """Load an identity file, detecting its kind: MEK (raw or hex) or X25519 identity (PEM)."""
    data = _read_key_file(path)
    key = _private_key(data, path)
    if isinstance(key, X25519PrivateKey):
        return X25519Identity(key)
    if isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is an owner signer key, not an identity that opens models")
    mek = parse_mek(data)
    if mek is None:
        raise KeyFileError(f"{path} is neither a MEK file nor an X25519 identity")
    return MEK(mek)


def parse_recipient(value: str) -> X25519Recipient:
    """A recipient given as its text form, or as a file holding the text form, PEM or 32 raw bytes.

    A text file may name the device the key belongs to with a ``# device: N`` line (the slot).
    """
    if value.startswith(X25519_PREFIX):
        return X25519Recipient(X25519PublicKey.from_public_bytes(_decode_text(X25519_PREFIX, value)))
    if not Path(value).exists():
        raise KeyFileError(f"{value!r} is neither a recipient string ({X25519_PREFIX}...) nor a file")
    data = _read_key_file(value)
    block = _PEM_PUBLIC.search(data)
    if block is not None:
        pub = _public_key(block.group(0), value)
        if not isinstance(pub, X25519PublicKey):
            raise KeyFileError(f"{value}: not an X25519 public key")
        return X25519Recipient(pub)
    text = data.decode("ascii", "replace")
    slot = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(_DEVICE_COMMENT):
            slot = line[len(_DEVICE_COMMENT) :].strip() or None
        elif line.startswith(X25519_PREFIX):
            return dataclasses.replace(parse_recipient(line), slot=slot)
    if len(data) == 32:
        return X25519Recipient(X25519PublicKey.from_public_bytes(data))
    private = _private_key(data, value)
    if isinstance(private, X25519PrivateKey):
        return X25519Identity(private).recipient
    raise KeyFileError(f"{value}: no X25519 public key found (text form, PEM, or 32 raw bytes)")


def write_x25519_identity(
    identity: X25519Identity, path: str | os.PathLike[str], *, overwrite: bool = False
) -> str:
    """Write the identity (PEM, 0600, with its public recipient as a comment); return the recipient.

    An existing file is an :class:`OutputError` unless ``overwrite``: a key is never lost by accident.
    """
    recipient = x25519_recipient_string(identity.recipient)
    pem = identity.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    text = f"# modelseal X25519 identity\n# public key: {recipient}\n".encode() + pem
    atomic_write_bytes(path, text, 0o600, overwrite=overwrite)
    return recipient


def write_mek(
    key: bytes, path: str | os.PathLike[str], *, hex_form: bool = False, overwrite: bool = False
) -> None:
    """Write a MEK file (0600, raw or hex); an existing file is an error unless ``overwrite``."""
    atomic_write_bytes(path, key.hex().encode() + b"\n" if hex_form else key, 0o600, overwrite=overwrite)


def load_signer(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    data = _read_key_file(path)
    key = _private_key(data, path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 owner signer key")
    return key


def load_signer_public(value: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An owner public key as its text form, a file holding it, or a PEM public key file."""
    text = str(value)
    if text.startswith(ED25519_PREFIX):
        return Ed25519PublicKey.from_public_bytes(_decode_text(ED25519_PREFIX, text))
    data = _read_key_file(value)
    block = _PEM_PUBLIC.search(data)
    if block is not None:
        pub = _public_key(block.group(0), value)
        if isinstance(pub, Ed25519PublicKey):
            return pub
        raise KeyFileError(f"{value}: not an Ed25519 public key")
    for line in data.decode("ascii", "replace").splitlines():
        if line.strip().startswith(ED25519_PREFIX):
            return load_signer_public(line.strip())
    private = _private_key(data, value)
    if isinstance(private, Ed25519PrivateKey):
        return private.public_key()
    raise KeyFileError(f"{value}: no Ed25519 public key found")


def signer_public_path(path: str | os.PathLike[str]) -> Path:
    """Where :func:`write_signer` puts the public half of the key written to ``path``."""
    return Path(path).with_suffix(".pub")


def write_signer(
    key: Ed25519PrivateKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> tuple[Path, str]:
    """Write owner.key (PEM, 0600) and owner.pub (text form); return the .pub path and text.

    Neither file is written if either exists (unless ``overwrite``), and a failure writing the
    public half removes the private half this call wrote.
    """
    private_path, pub_path = Path(path), signer_public_path(path)
    if pub_path == private_path:
        raise UsageError(
            f"{path} ends in .pub, where the public key goes: name the private key file otherwise "
            "(e.g. owner.key, which writes owner.key and owner.pub)"
        )
    if not overwrite:
        for target in (private_path, pub_path):
            if target.exists() or target.is_symlink():
                raise exists_error(target)
    public = ed25519_public_string(key.public_key())
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    header = f"# modelseal owner signer key\n# public key: {public}\n".encode()
    atomic_write_bytes(private_path, header + pem, 0o600, overwrite=overwrite)
    try:
        atomic_write_bytes(pub_path, (public + "\n").encode(), 0o644, overwrite=overwrite)
    except BaseException:
        if not overwrite:
            private_path.unlink(missing_ok=True)
        raise
    return pub_path, public
