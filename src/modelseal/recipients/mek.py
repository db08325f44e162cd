"""The MEK key file: the key file *is* the file key (the qaic MEK.dat flow).

Its stanza carries no wrapped key, only the MEK's public key id, so `inspect` can tell which key
file opens a model. A MEK holder opens every model sealed under that MEK whatever the stanzas say.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..format.header import Stanza
from ..format.keys import check_file_key, key_id

STANZA_TYPE = "mek"


@dataclass(frozen=True)
class MEK:
    """A model encryption key: both an identity (it opens) and a recipient (it names itself)."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_file_key(self.key)

    @property
    def key_id(self) -> bytes:
        return key_id(self.key)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        return [Stanza(STANZA_TYPE, (self.key_id,), b"")]

    def matches(self, stanza: Stanza) -> bool:
        return stanza.type == STANZA_TYPE and stanza.args == (self.key_id,)

    def unwrap(self, stanzas: Sequence[Stanza]) -> Iterator[bytes]:
        yield self.key
