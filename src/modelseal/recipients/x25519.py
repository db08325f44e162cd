"""X25519 recipient: the file key is sealed with HPKE (RFC 9180, base mode).

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The stanza names the recipient by an
8-byte fingerprint of its public key so an identity tries only its own stanzas and `rewrap` can
remove a recipient; the price is that files addressed to the same key are linkable. An optional
second argument names the device slot (the qaic device number) the key belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import FormatError, KeyFileError, UsageError
from ..format.header import Stanza
from ..format.keys import FILE_KEY_SIZES

STANZA_TYPE = "x25519"
ENC_SIZE = 32
MAX_SLOT = 64
_SLOT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_INFO = b"modelseal/v1 x25519"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_slot(slot: str) -> None:
    """Device slots are short plain labels (they also name wrap-mek's deviceN folders)."""
    if not _SLOT.fullmatch(slot):
        raise UsageError(f"a device slot is 1 to {MAX_SLOT} characters of A-Z a-z 0-9 . _ -, not {slot!r}")


def slot_of(stanza: Stanza) -> str | None:
    """The device slot label of an x25519 stanza, if it has one."""
    if stanza.type != STANZA_TYPE or len(stanza.args) < 2:
        return None
    return stanza.args[1].decode("utf-8", "replace")


def check_not_low_order(key: X25519PublicKey) -> None:
    """A low-order point makes every shared secret zero, so anyone could unwrap: refuse it up front.

    Clamped scalars are multiples of 8, so one exchange with any private key shows it (RFC 7748 §6.1).
    """
    try:
        X25519PrivateKey.generate().exchange(key)
    except ValueError:
        raise KeyFileError("not a usable X25519 recipient: a low-order public key") from None


def fingerprint(public_key: bytes) -> bytes:
    return sha256(b"modelseal/v1 x25519 fingerprint" + public_key).digest()[:8]


@dataclass(frozen=True)
class X25519Recipient:
    """An X25519 public key; ``slot`` optionally names the device it belongs to (qaic device number).

    The slot lets `replace-mek` swap the wrap of one reset device and keep the others'.
    """

    public_key: X25519PublicKey
    slot: str | None = None

    def __post_init__(self) -> None:
        if self.slot is not None:
            check_slot(self.slot)
        check_not_low_order(self.public_key)

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(public_bytes(self.public_key))

    def wrap(self, file_key: bytes) -> list[Stanza]:
        body = _SUITE.encrypt(file_key, self.public_key, info=_INFO)
        slot = (self.slot.encode(),) if self.slot is not None else ()
        return [Stanza(STANZA_TYPE, (self.fingerprint, *slot), body)]

    def matches(self, stanza: Stanza) -> bool:
        return stanza.type == STANZA_TYPE and stanza.args[:1] == (self.fingerprint,)


@dataclass(frozen=True)
class X25519Identity:
    private_key: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(X25519PrivateKey.generate())

    @property
    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self.private_key.public_key())

    def unwrap(self, stanzas: Sequence[Stanza]) -> Iterator[bytes]:
        own = self.recipient.fingerprint
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE or stanza.args[:1] != (own,) or len(stanza.args) > 2:
                continue
            if len(stanza.body) - ENC_SIZE - 16 not in FILE_KEY_SIZES:
                raise FormatError("malformed x25519 recipient stanza body")
            try:
                yield _SUITE.decrypt(stanza.body, self.private_key, info=_INFO)
            except InvalidTag:
                continue
