"""A second reader of sealed models (format version 1), written from docs/SPEC.md alone.

It shares no code with modelseal (it must never import it) and uses only ``cryptography``'s
primitives and the standard library: HPKE is re-derived here from RFC 9180 rather than taken from
``cryptography.hazmat.primitives.hpke``, so a mistake in the spec's description of the x25519
stanza cannot hide behind the same library call on both sides. It favours plainness over speed:
the whole file is held in memory, which is fine for test vectors and nothing else.

Every rejection is one of three exceptions, the failure classes of SPEC §7 and of the vector files:
HeaderFailure, PayloadFailure and NoMatch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key


class Rejected(Exception):
    """The file was refused; the subclass says at which stage (SPEC §7)."""

    kind = ""


class HeaderFailure(Rejected):
    kind = "header failure"


class PayloadFailure(Rejected):
    kind = "payload failure"


class NoMatch(Rejected):
    kind = "no match"


# --- SPEC §3 constants ------------------------------------------------------------------------------

MAGIC = b"\x89MSEAL\r\n"
MAX_HEADER_LENGTH = 64 * 1024 * 1024
MIN_CHUNK, MAX_CHUNK = 4096, 256 * 1024 * 1024
MAX_METADATA, MAX_MANIFEST = 1024 * 1024, 16 * 1024 * 1024
MAX_STANZAS, MAX_ARGS, MAX_ARG, MAX_BODY = 4096, 8, 1024, 65536
STANZA_TYPE = re.compile(rb"[a-z0-9][a-z0-9._-]{0,31}")
TAG = 16
MIN_LOG_N, MAX_LOG_N = 10, 20  # SPEC §5.2
BASE64URL = re.compile(r"[A-Za-z0-9_-]*")  # SPEC §9.2: no padding, no other character


# --- identities ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MekKey:
    key: bytes


@dataclass(frozen=True)
class X25519Key:
    private: bytes  # 32 raw bytes

    @classmethod
    def from_pem(cls, pem: bytes) -> X25519Key:
        key = load_pem_private_key(pem, password=None)
        if not isinstance(key, X25519PrivateKey):
            raise ValueError("not an X25519 private key")
        return cls(key.private_bytes_raw())


@dataclass(frozen=True)
class PassphraseKey:
    passphrase: bytes


Identity = MekKey | X25519Key | PassphraseKey


def parse_ed25519_text(text: str) -> bytes:
    """SPEC §9: ms-ed25519: + base64url(key || SHA-256(prefix || key)[:4]), unpadded."""
    prefix = "ms-ed25519:"
    if not text.startswith(prefix):
        raise ValueError("not an ms-ed25519 key")
    body = text[len(prefix) :]
    if not BASE64URL.fullmatch(body):
        raise ValueError("a character outside the base64url alphabet")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error:
        raise ValueError("bad base64") from None
    key, check = raw[:-4], raw[-4:]
    if len(key) != 32 or hashlib.sha256(prefix.encode() + key).digest()[:4] != check:
        raise ValueError("bad key length or checksum")
    return key


# --- key schedule, SPEC §2 ------------------------------------------------------------------------------


def hkdf(ikm: bytes, salt: bytes | None, info: str, length: int = 32) -> bytes:
    return HKDF(SHA256(), length, salt, info.encode()).derive(ikm)


def hmac256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# --- header parsing, SPEC §3 ----------------------------------------------------------------------------


class Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise HeaderFailure("truncated header structure")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def sized(self, bound: int) -> bytes:
        n = self.uint(4)
        if n > bound:
            raise HeaderFailure("length over its bound")
        return self.take(n)


@dataclass
class Stanza:
    type: str
    args: list[bytes]
    body: bytes
    mac: bytes
    unauthenticated: bytes  # the encoding the stanza MAC covers


@dataclass
class Header:
    header_length: int
    preamble_and_core: bytes
    core: bytes
    salt: bytes
    chunk_size: int
    payload_length: int
    signer_key: bytes
    payload_digest: bytes
    manifest: bytes
    mac: bytes
    signature: bytes
    stanzas: list[Stanza]


def check_metadata(metadata: bytes) -> None:
    """SPEC §4.4: a UTF-8 JSON object, checked while parsing (an empty field is not one either)."""
    try:
        doc = json.loads(metadata.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HeaderFailure("metadata is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise HeaderFailure("metadata is not a JSON object")


def parse_header(data: bytes) -> Header:
    if len(data) < 20 or data[:8] != MAGIC:
        raise HeaderFailure("bad magic")
    version, reserved, header_length, core_length = struct.unpack(">HHII", data[8:20])
    if version != 1:
        raise HeaderFailure(f"unsupported version {version}")
    if reserved != 0 or not 20 < header_length <= MAX_HEADER_LENGTH or core_length > header_length - 20:
        raise HeaderFailure("bad preamble")
    if len(data) < header_length:
        raise HeaderFailure("file shorter than its header")
    region = Cursor(data[:header_length])
    region.take(20)
    core_bytes = region.take(core_length)

    core = Cursor(core_bytes)
    salt = core.take(32)
    aead, chunk_size, payload_length, signer_len = core.uint(1), core.uint(4), core.uint(8), core.uint(1)
    if aead != 1 or not MIN_CHUNK <= chunk_size <= MAX_CHUNK or signer_len not in (0, 32):
        raise HeaderFailure("bad core field")
    signer_key = core.take(signer_len)
    digest = core.take(32 if signer_len else 0)
    check_metadata(core.sized(MAX_METADATA))
    manifest = core.sized(MAX_MANIFEST)
    if core.pos != len(core_bytes):
        raise HeaderFailure("trailing bytes in core")

    mac = region.take(32)
    signature = region.take(64 if signer_len else 0)
    count = region.uint(2)
    if count > MAX_STANZAS:
        raise HeaderFailure("too many stanzas")
    stanzas = []
    for _ in range(count):
        start = region.pos
        kind = region.take(region.uint(1))
        if not STANZA_TYPE.fullmatch(kind):
            raise HeaderFailure("bad stanza type")
        nargs = region.uint(1)
        if nargs > MAX_ARGS:
            raise HeaderFailure("too many stanza args")
        args = []
        for _ in range(nargs):
            n = region.uint(2)
            if n > MAX_ARG:
                raise HeaderFailure("stanza arg too long")
            args.append(region.take(n))
        body = region.sized(MAX_BODY)
        unauthenticated = region.data[start : region.pos]
        stanzas.append(Stanza(kind.decode(), args, body, region.take(32), unauthenticated))
    if any(region.data[region.pos :]):
        raise HeaderFailure("non-zero padding")
    return Header(
        header_length,
        data[: 20 + core_length],
        core_bytes,
        salt,
        chunk_size,
        payload_length,
        signer_key,
        digest,
        manifest,
        mac,
        signature,
        stanzas,
    )


# --- recipient stanzas, SPEC §5 -------------------------------------------------------------------------

_KEM = b"KEM\x00\x20"
_HPKE = b"HPKE\x00\x20\x00\x01\x00\x02"


def _extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac256(salt, b"HPKE-v1" + suite + label + ikm)


def _expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(SHA256(), length, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info).derive(
        prk
    )


def hpke_open(private: bytes, enc: bytes, ciphertext: bytes, info: bytes) -> bytes:
    """RFC 9180 SetupBaseR + Open (sequence 0, empty aad) for DHKEM(X25519)/HKDF-SHA256/AES-256-GCM."""
    sk = X25519PrivateKey.from_private_bytes(private)
    pk_r = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    except ValueError:  # a low-order point: RFC 9180 §7.1.4 says to abort
        raise InvalidTag() from None
    shared = _expand(_KEM, _extract(_KEM, b"", b"eae_prk", dh), b"shared_secret", enc + pk_r, 32)
    context = b"\x00" + _extract(_HPKE, b"", b"psk_id_hash", b"") + _extract(_HPKE, b"", b"info_hash", info)
    secret = _extract(_HPKE, shared, b"secret", b"")
    key = _expand(_HPKE, secret, b"key", context, 32)
    nonce = _expand(_HPKE, secret, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(nonce, ciphertext, b"")


def candidates(identity: Identity, stanzas: list[Stanza]) -> list[tuple[bytes, bool]]:
    """(file key, addressed) pairs. ``addressed``: a wrong key here means tampering, not "not for me"."""
    if isinstance(identity, MekKey):
        key_id = hkdf(identity.key, None, "modelseal/v1 key id", 8)
        named = any(s.type == "mek" and s.args == [key_id] for s in stanzas)
        return [(identity.key, named)]
    found = []
    if isinstance(identity, X25519Key):
        public = X25519PrivateKey.from_private_bytes(identity.private).public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        fp = hashlib.sha256(b"modelseal/v1 x25519 fingerprint" + raw).digest()[:8]
        for s in stanzas:
            # args: [fingerprint] or [fingerprint, device slot]; only the fingerprint selects.
            if s.type != "x25519" or s.args[:1] != [fp] or len(s.args) > 2:
                continue
            if len(s.body) not in (32 + 16 + 16, 32 + 32 + 16):
                raise HeaderFailure("x25519 stanza body length")
            try:
                found.append(
                    (hpke_open(identity.private, s.body[:32], s.body[32:], b"modelseal/v1 x25519"), True)
                )
            except InvalidTag:
                continue
        return found
    scrypt = [s for s in stanzas if s.type == "scrypt"]
    if len(scrypt) > 1:
        raise HeaderFailure("more than one scrypt stanza")  # before any scrypt work is spent
    for s in scrypt:
        if len(s.args) != 2 or len(s.args[0]) != 16 or len(s.args[1]) != 1:
            raise HeaderFailure("scrypt stanza args")
        log_n = s.args[1][0]
        if not MIN_LOG_N <= log_n <= MAX_LOG_N or len(s.body) not in (32, 48):
            raise HeaderFailure("scrypt stanza out of bounds")  # before any scrypt work is spent
        wrapping = Scrypt(b"modelseal/v1 scrypt" + s.args[0], 32, 1 << log_n, 8, 1).derive(
            identity.passphrase
        )
        try:
            found.append((AESGCM(wrapping).decrypt(bytes(12), s.body, b"modelseal/v1 scrypt"), True))
        except InvalidTag:
            continue
    return found


# --- opening, SPEC §7 -----------------------------------------------------------------------------------


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise HeaderFailure("bad manifest name")
    try:
        encoded = name.encode("utf-8")  # strict: a lone surrogate (JSON "\ud800") is not UTF-8
    except UnicodeEncodeError:
        raise HeaderFailure("manifest name is not valid UTF-8") from None
    if not name or len(encoded) > 4096:
        raise HeaderFailure("bad manifest name")
    if "\x00" in name or "\\" in name or name.startswith("/"):
        raise HeaderFailure("bad manifest name")
    for part in name.split("/"):
        if part in ("", ".", "..") or len(part.encode("utf-8")) > 255:
            raise HeaderFailure("bad manifest name")
    return name


def parse_manifest(plain: bytes, payload_length: int) -> list[tuple[str, int, int]]:
    try:
        doc = json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HeaderFailure("manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") not in ("file", "folder"):
        raise HeaderFailure("manifest kind")
    rows = doc.get("files")
    if not isinstance(rows, list) or len(rows) > 100_000 or (doc["kind"] == "file" and len(rows) != 1):
        raise HeaderFailure("manifest files")
    entries = []
    end = 0
    for row in rows:
        if not isinstance(row, list) or len(row) != 4:
            raise HeaderFailure("manifest row")
        name, offset, size, executable = check_name(row[0]), row[1], row[2], row[3]
        if type(offset) is not int or type(size) is not int or offset < end or size < 0:
            raise HeaderFailure("manifest range")
        if type(executable) is not int or executable not in (0, 1):  # not true, 1.0 or 2
            raise HeaderFailure("manifest executable flag")
        if offset + size > payload_length:
            raise HeaderFailure("manifest range")
        end = offset + size
        entries.append((name, offset, size))
    names = {e[0] for e in entries}
    if len(names) != len(entries):
        raise HeaderFailure("duplicate name")
    for name in names:
        parts = name.split("/")
        if any("/".join(parts[:i]) in names for i in range(1, len(parts))):
            raise HeaderFailure("a name is both a file and a folder")
    return entries


def open_sealed(data: bytes, identity: Identity, signer: bytes | None = None) -> dict[str, bytes]:
    """Authenticate and decrypt; return {file name: plaintext}. Raises a Rejected subclass."""
    h = parse_header(data)

    file_key = None
    addressed = False
    for key, named in candidates(identity, h.stanzas):
        if len(key) not in (16, 32):
            continue
        if hmac.compare_digest(hmac256(hkdf(key, h.salt, "modelseal/v1 header"), h.preamble_and_core), h.mac):
            file_key = key
            break
        addressed = addressed or named
    if file_key is None:
        raise (HeaderFailure if addressed else NoMatch)("no candidate file key verifies the header MAC")
    stanza_key = hkdf(file_key, None, "modelseal/v1 stanza")
    for s in h.stanzas:
        if not hmac.compare_digest(
            hmac256(stanza_key, b"modelseal/v1 stanza\x00" + s.unauthenticated), s.mac
        ):
            raise HeaderFailure(f"bad MAC on a {s.type} stanza")

    count = max(1, -(-h.payload_length // h.chunk_size))
    payload = data[h.header_length :]
    if len(payload) != h.payload_length + TAG * count:
        raise PayloadFailure("file size does not match the header")

    if signer is not None:
        if h.signer_key != signer:
            raise HeaderFailure("not signed by this owner")
        try:
            Ed25519PublicKey.from_public_bytes(signer).verify(
                h.signature, b"modelseal/v1 signature\x00" + struct.pack(">H", 1) + h.core
            )
        except InvalidSignature:
            raise HeaderFailure("bad owner signature") from None
        if hashlib.sha256(payload).digest() != h.payload_digest:
            raise PayloadFailure("payload is not the one the owner signed")

    try:
        plain_manifest = AESGCM(hkdf(file_key, h.salt, "modelseal/v1 manifest")).decrypt(
            bytes(12), h.manifest, b"modelseal/v1 manifest"
        )
    except InvalidTag:
        raise HeaderFailure("manifest does not decrypt") from None
    entries = parse_manifest(plain_manifest, h.payload_length)

    aead = AESGCM(hkdf(file_key, h.salt, "modelseal/v1 payload"))
    plain = bytearray()
    for i in range(count):
        start = i * (h.chunk_size + TAG)
        size = h.chunk_size if i < count - 1 else h.payload_length - (count - 1) * h.chunk_size
        nonce = i.to_bytes(11, "big") + (b"\x01" if i == count - 1 else b"\x00")
        try:
            plain += aead.decrypt(nonce, payload[start : start + size + TAG], None)
        except InvalidTag:
            raise PayloadFailure(f"chunk {i} does not authenticate") from None
    return {name: bytes(plain[offset : offset + size]) for name, offset, size in entries}
