"""What a recipient and an identity are: the one interface every key type implements.

A Recipient wraps a file key into stanzas (without MACs; the sealer authenticates them). An Identity
looks at the stanzas of a header and yields candidate file keys; the opener accepts a candidate only
if it verifies the header MAC (key commitment), so an identity never needs to be sure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from ..format.header import Stanza


@runtime_checkable
class Recipient(Protocol):
    def wrap(self, file_key: bytes) -> list[Stanza]: ...

    def matches(self, stanza: Stanza) -> bool:
        """True when ``stanza`` was made for this recipient (used to remove it on rewrap)."""
        ...


@runtime_checkable
class Identity(Protocol):
    def unwrap(self, stanzas: Sequence[Stanza]) -> Iterator[bytes]: ...
