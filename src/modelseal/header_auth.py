"""The header with keys in hand: assemble an authenticated header, and unlock one with identities.

Unlocking is where key commitment happens: a candidate file key is accepted only if it verifies the
header MAC; then every stanza's MAC must verify too, so no byte of the header is unauthenticated
(the padding is checked to be zero by the parser).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import IntegrityError, NoMatchingIdentityError
from .format.header import Core, Header, Stanza, encode_preamble
from .format.keys import (
    FileKeys,
    authenticate_stanza,
    derive_file_keys,
    header_mac,
    header_mac_ok,
    stanza_mac_key,
    stanza_mac_ok,
)
from .recipients import MEK, Identity

VERSION = 1


def assemble(
    file_key: bytes, core: Core, stanzas: Sequence[Stanza], header_length: int, signature: bytes
) -> Header:
    """Build a header whose MAC and stanza MACs are made with ``file_key``."""
    core_bytes = core.encode()
    keys = derive_file_keys(file_key, core.salt)
    mac = header_mac(keys.header, encode_preamble(header_length, len(core_bytes)) + core_bytes)
    authenticated = [authenticate_stanza(file_key, s) for s in stanzas]
    return Header(VERSION, header_length, core, core_bytes, mac, signature, authenticated)


@dataclass(frozen=True)
class Unlocked:
    file_key: bytes
    keys: FileKeys


def _as_list(identities: Identity | Sequence[Identity]) -> list[Identity]:
    if isinstance(identities, Sequence):
        return list(identities)
    return [identities]


def unlock(header: Header, identities: Identity | Sequence[Identity]) -> Unlocked:
    """Find the file key with the given identities and authenticate the whole header with it."""
    candidates_seen = False
    for identity in _as_list(identities):
        # A MEK always yields itself; it is only "the intended key" if a mek stanza names it.
        certain = not isinstance(identity, MEK) or any(identity.matches(s) for s in header.stanzas)
        for file_key in identity.unwrap(header.stanzas):
            if len(file_key) not in (16, 32):
                continue
            keys = derive_file_keys(file_key, header.core.salt)
            if header_mac_ok(keys.header, header.preamble_and_core, header.mac):
                mac_key = stanza_mac_key(file_key)
                if not all(stanza_mac_ok(mac_key, s) for s in header.stanzas):
                    raise IntegrityError()
                return Unlocked(file_key, keys)
            candidates_seen = candidates_seen or certain
    if candidates_seen:
        raise IntegrityError()
    raise NoMatchingIdentityError("no identity given can open this sealed model (wrong key or passphrase?)")
