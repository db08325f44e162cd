"""Building hostile sealed models: header surgery with and without the file key.

Two kinds of attacker are modelled. The edge host has no key: it edits bytes (``splice``), so every
MAC it cannot recompute stays as it was. A holder of the file key (a recipient gone rogue, or a test
that wants only one check to stand in the way) re-authors the header with every MAC valid
(``reauthor``), so the check under test is the only thing that can refuse it.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import modelseal
from modelseal.format.header import (
    MAC_SIZE,
    PREAMBLE_SIZE,
    Core,
    Header,
    Stanza,
    encode_preamble,
    parse_header,
)
from modelseal.header_auth import assemble

CHUNK = 4096
PAYLOAD_SIZE = 3 * CHUNK + 100  # three chunks, the last one short

# Offsets inside the core (docs/SPEC.md §3.2), from the start of the file.
AEAD_AT = PREAMBLE_SIZE + 32
CHUNK_SIZE_AT = AEAD_AT + 1
PAYLOAD_LENGTH_AT = CHUNK_SIZE_AT + 4
SIGNER_LENGTH_AT = PAYLOAD_LENGTH_AT + 8

# Anything an open() of a hostile file may raise: the documented failure classes, nothing else.
REJECTED = (modelseal.FormatError, modelseal.IntegrityError, modelseal.NoMatchingIdentityError)


@dataclass
class Sample:
    """A real sealed model and everything that opens it."""

    path: Path
    data: bytes  # the sealed file
    plain: bytes  # its plaintext
    mek: bytes
    identity: modelseal.X25519Identity
    passphrase: bytes | None
    signer: Ed25519PrivateKey | None

    @property
    def header(self) -> Header:
        return parse_header(self.data[: header_length(self.data)])

    @property
    def payload(self) -> bytes:
        return self.data[header_length(self.data) :]


def header_length(data: bytes) -> int:
    return int(struct.unpack_from(">I", data, 12)[0])


def seal_sample(
    folder: Path,
    *,
    passphrase: bytes | None = None,
    signed: bool = False,
    slot: str | None = None,
    chunk_size: int = CHUNK,
    size: int = PAYLOAD_SIZE,
    log_n: int = 10,
) -> Sample:
    """A model sealed under a MEK (mek stanza), to one X25519 identity and optionally a passphrase."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = os.urandom(size)
    src = folder / "model.bin"
    src.write_bytes(plain)
    mek = modelseal.keygen()
    identity = modelseal.X25519Identity.generate()
    recipients: list[modelseal.Recipient] = [
        modelseal.X25519Recipient(identity.private_key.public_key(), slot)
    ]
    if passphrase is not None:
        recipients.append(modelseal.Passphrase(passphrase, log_n=log_n))
    signer = modelseal.generate_signer() if signed else None
    out = folder / "model.mseal"
    modelseal.seal(src, out, recipients, mek=mek, signer=signer, chunk_size=chunk_size, header_room=4096)
    return Sample(out, out.read_bytes(), plain, mek, identity, passphrase, signer)


def reauthor(
    sample: Sample,
    *,
    core: Core | None = None,
    stanzas: Sequence[Stanza] | None = None,
    signature: bytes | None = None,
    file_key: bytes | None = None,
    room: int = 0,
) -> bytes:
    """The sealed file with its header rebuilt by a file-key holder: every MAC is valid.

    ``stanzas`` are given without MACs (they are recomputed with the file key). ``room`` grows the
    header so that oversized stanzas fit; the payload is appended unchanged.
    """
    old = sample.header
    new_core = core if core is not None else old.core
    new_stanzas = [dataclasses.replace(s, mac=b"") for s in old.stanzas] if stanzas is None else list(stanzas)
    sig = old.signature if signature is None else signature
    draft = assemble(file_key or sample.mek, new_core, new_stanzas, 0, sig)
    length = max(old.header_length, -(-(draft.used_length + room) // 4096) * 4096)
    header = assemble(file_key or sample.mek, new_core, new_stanzas, length, sig)
    return header.encode() + sample.payload


def encode_stanza(
    kind: bytes,
    args: Sequence[bytes],
    body: bytes,
    mac: bytes = bytes(MAC_SIZE),
    *,
    type_length: int | None = None,
    arg_count: int | None = None,
    arg_lengths: Sequence[int] | None = None,
    body_length: int | None = None,
) -> bytes:
    """One stanza's bytes, with any length field free to lie about what follows it."""
    out = [bytes([len(kind) if type_length is None else type_length]), kind]
    out.append(bytes([len(args) if arg_count is None else arg_count]))
    for i, arg in enumerate(args):
        n = len(arg) if arg_lengths is None else arg_lengths[i]
        out += [struct.pack(">H", n), arg]
    out += [struct.pack(">I", len(body) if body_length is None else body_length), body, mac]
    return b"".join(out)


def splice(sample: Sample, stanzas: Sequence[bytes], *, count: int | None = None) -> bytes:
    """The sealed file with its stanza list replaced byte for byte, as the edge host could do.

    The preamble, core, header MAC, signature and payload stay as sealed; the header keeps its
    length (zero padding after the new stanzas), so only the stanza bytes differ.
    """
    old = sample.header
    body = b"".join(
        [
            old.preamble_and_core,
            old.mac,
            old.signature,
            struct.pack(">H", len(stanzas) if count is None else count),
            *stanzas,
        ]
    )
    assert len(body) <= old.header_length, "the hostile stanzas do not fit in the header room"
    return body + bytes(old.header_length - len(body)) + sample.payload


def own_stanza_bytes(sample: Sample) -> list[bytes]:
    """The sample's stanzas exactly as sealed (MACs included)."""
    return [s.encode() for s in sample.header.stanzas]


def with_preamble(data: bytes, *, header_len: int | None = None, core_length: int | None = None) -> bytes:
    old_hl, old_cl = struct.unpack_from(">II", data, 12)
    preamble = encode_preamble(
        old_hl if header_len is None else header_len, old_cl if core_length is None else core_length
    )
    return preamble + data[PREAMBLE_SIZE:]


def patch(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def attempt(
    path: Path,
    data: bytes,
    identity: modelseal.Identity | Sequence[modelseal.Identity],
    signer: Ed25519PublicKey | None = None,
) -> BaseException | None:
    """Write ``data`` to ``path`` and open it; the error it raised, or None if it opened."""
    path.write_bytes(data)
    try:
        modelseal.open(path, identity, signer=signer).close()
    except modelseal.ModelSealError as e:
        return e
    return None
