"""The `vault` recipient stanza (SPEC §5.4): args [key name, version], body = a wrapped data key.

Sealing: the vault, not the sealer, makes the file key. ``VaultRecipient.prepare`` asks for a data
key (plaintext + wrapped); the sealer uses the plaintext as the MEK (``seal(..., mek=...)``) and this
recipient contributes the prepared stanza. ``wrap`` refuses any other file key, since the body can
only ever unwrap to the data key the vault made.

Opening: ``VaultIdentity`` sends each `vault` stanza to the vault's unwrap route, which is for
admins and operators; devices use key release (PSK proof, policy, licence, HPKE-sealed answer)
through ``device.DeviceIdentity``, behind the same Identity interface.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ...errors import FormatError, UsageError
from ...format.header import Stanza
from ...keyrelease import datakeys
from ..errors import NotFound
from .api import VaultClient

STANZA_TYPE = "vault"


def stanza_args(name: str, version: int) -> tuple[bytes, bytes]:
    return name.encode("utf-8"), str(version).encode("ascii")


def parse_args(stanza: Stanza) -> tuple[str, int]:
    """Stanza contents are attacker-controlled until the header MAC checks: bound everything."""
    if len(stanza.args) != 2 or len(stanza.args[0]) > 256 or not 1 <= len(stanza.args[1]) <= 10:
        raise FormatError("malformed vault recipient stanza")
    try:
        name = stanza.args[0].decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("malformed vault recipient stanza: key name is not UTF-8") from None
    digits = stanza.args[1]
    if not digits.isdigit() or not digits.isascii() or digits.startswith(b"0"):
        raise FormatError("malformed vault recipient stanza: version is not a decimal number")
    if len(stanza.body) != datakeys.WRAPPED_SIZE:
        raise FormatError("malformed vault recipient stanza body")
    return name, int(digits)


@dataclass(frozen=True)
class VaultRecipient:
    """A data key the vault made for this model: its wrapped form becomes the `vault` stanza."""

    key_name: str
    key_version: int
    wrapped: bytes
    data_key: bytes = field(repr=False)

    @classmethod
    def prepare(cls, client: VaultClient, key_name: str) -> VaultRecipient:
        """Ask the vault for a new data key under ``key_name``; use ``.data_key`` as the MEK."""
        answer = client.datakey(key_name, plaintext=True)
        if answer.plaintext is None or len(answer.plaintext) != datakeys.DATA_KEY_SIZE:
            raise UsageError("the vault did not return a 256-bit data key")
        return cls(answer.key_name, answer.key_version, answer.wrapped, answer.plaintext)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        if not hmac.compare_digest(file_key, self.data_key):
            raise UsageError(
                "a vault recipient wraps only its own data key: seal with mek=recipient.data_key"
            )
        return [Stanza(STANZA_TYPE, stanza_args(self.key_name, self.key_version), self.wrapped)]

    def matches(self, stanza: Stanza) -> bool:
        return stanza.type == STANZA_TYPE and stanza.args[:1] == (self.key_name.encode("utf-8"),)


@dataclass(frozen=True)
class VaultIdentity:
    """Opens models through a vault: each `vault` stanza's body is unwrapped by the vault.

    A stanza naming a key this vault does not know is skipped (another identity may open the
    model); a disabled key, a retired version or a refused token is an error the caller sees.
    """

    client: VaultClient

    def unwrap(self, stanzas: Sequence[Stanza]) -> Iterator[bytes]:
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            name, version = parse_args(stanza)
            try:
                yield self.client.unwrap(name, version, stanza.body)
            except NotFound:
                continue
