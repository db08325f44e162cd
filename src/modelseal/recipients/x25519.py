"""X25519 recipient: the file key is sealed with HPKE (RFC 9180, base mode).

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The stanza names the recipient by an
8-byte fingerprint of its public key so an identity tries only its own stanzas and `rewrap` can
remove a recipient; the price is that files addressed to the same key are linkable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import FormatError
from ..format.header import Stanza
from ..format.keys import FILE_KEY_SIZES

STANZA_TYPE = "x25519"
ENC_SIZE = 32
_INFO = b"modelseal/v1 x25519"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(public_key: bytes) -> bytes:
    return sha256(b"modelseal/v1 x25519 fingerprint" + public_key).digest()[:8]


@dataclass(frozen=True)
class X25519Recipient:
    public_key: X25519PublicKey

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(public_bytes(self.public_key))

    def wrap(self, file_key: bytes) -> list[Stanza]:
        body = _SUITE.encrypt(file_key, self.public_key, info=_INFO)
        return [Stanza(STANZA_TYPE, (self.fingerprint,), body)]

    def matches(self, stanza: Stanza) -> bool:
        return stanza.type == STANZA_TYPE and stanza.args == (self.fingerprint,)


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
            if stanza.type != STANZA_TYPE or stanza.args != (own,):
                continue
            if len(stanza.body) - ENC_SIZE - 16 not in FILE_KEY_SIZES:
                raise FormatError("malformed x25519 recipient stanza body")
            try:
                yield _SUITE.decrypt(stanza.body, self.private_key, info=_INFO)
            except InvalidTag:
                continue
