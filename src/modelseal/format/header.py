"""The sealed header, as bytes: preamble, core, MAC, signature, recipient stanzas, padding.

This module knows byte layouts and bounds only; it holds no key. See docs/SPEC.md §3 for the
normative tables. Every length read from the file is checked against a bound before anything is
allocated, and every parse failure is a :class:`FormatError`.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

from ..errors import FormatError, UnsupportedVersionError

MAGIC = b"\x89MSEAL\r\n"
VERSION = 1
PREAMBLE = struct.Struct(">8sHHII")  # magic, version, reserved, header_length, core_length
PREAMBLE_SIZE = PREAMBLE.size  # 20

AEAD_AES256GCM_STREAM = 1
TAG_SIZE = 16
SALT_SIZE = 32
MAC_SIZE = 32
SIGNATURE_SIZE = 64
SIGNER_KEY_SIZE = 32
DIGEST_SIZE = 32

MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 256 << 20  # one AESGCM call stays far below 2**31 - 1 bytes
DEFAULT_CHUNK_SIZE = 4 << 20
MAX_HEADER_LENGTH = 64 << 20
MAX_METADATA = 1 << 20
MAX_MANIFEST = 16 << 20
MAX_STANZAS = 4096
MAX_STANZA_ARGS = 8
MAX_STANZA_ARG = 1024
MAX_STANZA_BODY = 64 << 10
HEADER_ALIGN = 4096
DEFAULT_HEADER_ROOM = 4096

_STANZA_TYPE = re.compile(rb"[a-z0-9][a-z0-9._-]{0,31}")
_CORE_FIXED = struct.Struct(">32sBIQB")  # salt, aead, chunk_size, payload_length, signer_key_length


@dataclass(frozen=True)
class Stanza:
    """One recipient's wrapping of the file key. ``mac`` authenticates type, args and body."""

    type: str
    args: tuple[bytes, ...]
    body: bytes
    mac: bytes = b""

    def encode_unauthenticated(self) -> bytes:
        kind = self.type.encode("ascii")
        out = [struct.pack(">B", len(kind)), kind, struct.pack(">B", len(self.args))]
        for arg in self.args:
            out += [struct.pack(">H", len(arg)), arg]
        out += [struct.pack(">I", len(self.body)), self.body]
        return b"".join(out)

    def encode(self) -> bytes:
        if len(self.mac) != MAC_SIZE:
            raise ValueError("stanza has no MAC yet")
        return self.encode_unauthenticated() + self.mac


@dataclass(frozen=True)
class Core:
    """The part of the header that never changes on rewrap; covered by the MAC and the signature."""

    salt: bytes
    chunk_size: int
    payload_length: int
    metadata: bytes  # UTF-8 JSON object, public
    manifest: bytes  # AES-256-GCM ciphertext of the manifest (file names are confidential)
    signer_key: bytes = b""  # Ed25519 public key, or empty when unsigned
    payload_digest: bytes = b""  # SHA-256 of the payload ciphertext, present iff signed
    aead: int = AEAD_AES256GCM_STREAM

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.payload_length, self.chunk_size)

    @property
    def payload_ciphertext_length(self) -> int:
        return self.payload_length + TAG_SIZE * self.chunk_count

    def encode(self) -> bytes:
        parts = [
            _CORE_FIXED.pack(
                self.salt, self.aead, self.chunk_size, self.payload_length, len(self.signer_key)
            ),
            self.signer_key,
            self.payload_digest,
            struct.pack(">I", len(self.metadata)),
            self.metadata,
            struct.pack(">I", len(self.manifest)),
            self.manifest,
        ]
        return b"".join(parts)


@dataclass
class Header:
    """A parsed header. ``preamble_and_core`` is exactly the byte string the MAC covers."""

    version: int
    header_length: int
    core: Core
    core_bytes: bytes
    mac: bytes
    signature: bytes
    stanzas: list[Stanza] = field(default_factory=list)

    @property
    def preamble_and_core(self) -> bytes:
        return encode_preamble(self.header_length, len(self.core_bytes)) + self.core_bytes

    def encode(self) -> bytes:
        """Serialize, padded with zeros to ``header_length``; raises if it does not fit."""
        body = self.encode_unpadded()
        if len(body) > self.header_length:
            raise OverflowError(len(body))
        return body + bytes(self.header_length - len(body))

    def encode_unpadded(self) -> bytes:
        parts = [self.preamble_and_core, self.mac, self.signature, struct.pack(">H", len(self.stanzas))]
        parts += [s.encode() for s in self.stanzas]
        return b"".join(parts)

    @property
    def used_length(self) -> int:
        return len(self.encode_unpadded())


def chunk_count(payload_length: int, chunk_size: int) -> int:
    """Number of STREAM chunks: an empty payload still has one (empty, final) chunk."""
    return max(1, -(-payload_length // chunk_size))


def encode_preamble(header_length: int, core_length: int) -> bytes:
    return PREAMBLE.pack(MAGIC, VERSION, 0, header_length, core_length)


def header_length_for(used: int, room: int = DEFAULT_HEADER_ROOM) -> int:
    """Header length that leaves at least ``room`` spare bytes and aligns the payload to a page."""
    return -(-(used + room) // HEADER_ALIGN) * HEADER_ALIGN


def check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise FormatError(f"chunk size {chunk_size} is outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}] bytes")


def parse_preamble(data: bytes) -> tuple[int, int]:
    """Return (header_length, core_length) from the first PREAMBLE_SIZE bytes."""
    if len(data) < PREAMBLE_SIZE or not data.startswith(MAGIC[:1]):
        raise FormatError("not a modelseal sealed model (bad magic)")
    magic, version, reserved, header_length, core_length = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("not a modelseal sealed model (bad magic)")
    if version != VERSION:
        raise UnsupportedVersionError(
            f"unsupported sealed-model format version {version} (this modelseal reads version {VERSION})"
        )
    if reserved != 0:
        raise FormatError("malformed header: reserved field is not zero")
    if not PREAMBLE_SIZE < header_length <= MAX_HEADER_LENGTH:
        raise FormatError("malformed header: header length out of bounds")
    if core_length > header_length - PREAMBLE_SIZE:
        raise FormatError("malformed header: core length out of bounds")
    return header_length, core_length


class _Reader:
    """Bounded cursor over a bytes object: every take() is checked against what is left."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(f"malformed header: {self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[int | bytes, ...]:
        return fmt.unpack(self.take(fmt.size))

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def sized(self, bound: int, name: str) -> bytes:
        n = self.u32()
        if n > bound:
            raise FormatError(f"malformed header: {name} exceeds its bound of {bound} bytes")
        return self.take(n)

    @property
    def rest(self) -> bytes:
        return self.data[self.pos :]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: Python accepts them, RFC 8259 does not


def check_metadata(data: bytes) -> None:
    """Public metadata is a UTF-8 JSON object; anything else is a malformed header."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: '[' * 100_000
        raise FormatError("malformed header: metadata is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise FormatError("malformed header: metadata is not a JSON object")


def parse_core(data: bytes) -> Core:
    r = _Reader(data, "core")
    salt, aead, chunk_size, payload_length, signer_len = r.unpack(_CORE_FIXED)
    assert isinstance(salt, bytes) and isinstance(aead, int) and isinstance(chunk_size, int)
    assert isinstance(payload_length, int) and isinstance(signer_len, int)
    if aead != AEAD_AES256GCM_STREAM:
        raise FormatError(f"unsupported payload cipher id {aead}")
    check_chunk_size(chunk_size)
    if signer_len not in (0, SIGNER_KEY_SIZE):
        raise FormatError("malformed header: signer key length")
    signer_key = r.take(signer_len)
    digest = r.take(DIGEST_SIZE if signer_len else 0)
    metadata = r.sized(MAX_METADATA, "metadata")
    check_metadata(metadata)
    manifest = r.sized(MAX_MANIFEST, "manifest")
    if r.rest:
        raise FormatError("malformed header: trailing bytes in core")
    return Core(salt, chunk_size, payload_length, metadata, manifest, signer_key, digest, aead)


def parse_stanza(r: _Reader) -> Stanza:
    type_len = r.u8()
    kind = r.take(type_len)
    if not _STANZA_TYPE.fullmatch(kind):
        raise FormatError("malformed header: invalid recipient stanza type")
    nargs = r.u8()
    if nargs > MAX_STANZA_ARGS:
        raise FormatError("malformed header: too many stanza arguments")
    args = []
    for _ in range(nargs):
        n = r.u16()
        if n > MAX_STANZA_ARG:
            raise FormatError("malformed header: stanza argument too long")
        args.append(r.take(n))
    body = r.sized(MAX_STANZA_BODY, "stanza body")
    mac = r.take(MAC_SIZE)
    return Stanza(kind.decode("ascii"), tuple(args), body, mac)


def parse_header(region: bytes) -> Header:
    """Parse a complete header region (exactly ``header_length`` bytes, preamble included)."""
    header_length, core_length = parse_preamble(region)
    if len(region) != header_length:
        raise FormatError("malformed header: file is shorter than its header")
    r = _Reader(region, "header")
    r.take(PREAMBLE_SIZE)
    core_bytes = r.take(core_length)
    core = parse_core(core_bytes)
    mac = r.take(MAC_SIZE)
    signature = r.take(SIGNATURE_SIZE if core.signer_key else 0)
    count = r.u16()
    if count > MAX_STANZAS:
        raise FormatError("malformed header: too many recipient stanzas")
    stanzas = [parse_stanza(r) for _ in range(count)]
    padding = r.rest
    if padding.count(0) != len(padding):
        raise FormatError("malformed header: non-zero bytes in the header padding")
    return Header(1, header_length, core, core_bytes, mac, signature, stanzas)
