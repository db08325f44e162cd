#!/usr/bin/env python3
"""Generate the sealed-model test vectors of docs/SPEC.md §12 into tests/vectors/*.vec.

Every key, salt, ephemeral key and plaintext is derived from a fixed label, so re-running the
script reproduces the committed files byte for byte (tests/vectors/test_vectors.py checks that).
Files are assembled from the library's own building blocks (manifest, Core, assemble,
PayloadCipher, sign_core), and a few of them are also sealed with ``modelseal.seal`` itself
(``os.urandom`` pinned) and compared, so the vectors describe what the real sealer writes.

The HPKE encapsulation of the x25519 recipient is done here from RFC 9180 with a fixed ephemeral
key, because ``cryptography``'s HPKE always draws a fresh one and the vectors must not change.

Usage: gen_vectors.py [--out DIR]   (default: tests/vectors next to this script's repository)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import hmac
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

import modelseal
from modelseal.format import manifest
from modelseal.format.header import (
    DIGEST_SIZE,
    MAC_SIZE,
    PREAMBLE_SIZE,
    SIGNATURE_SIZE,
    Core,
    Header,
    Stanza,
    header_length_for,
)
from modelseal.format.keys import FileKeys, derive_file_keys
from modelseal.format.stream import PayloadCipher, chunk_nonce
from modelseal.header_auth import VERSION, assemble
from modelseal.keyfiles import ed25519_public_string
from modelseal.recipients import MEK, Passphrase, X25519Recipient
from modelseal.recipients.passphrase import MAX_LOG_N
from modelseal.recipients.x25519 import fingerprint, public_bytes
from modelseal.signing import raw_public, sign_core

CHUNK = 4096  # the smallest chunk size a reader accepts: keeps every vector a few KiB
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors"


# --- fixed inputs ---------------------------------------------------------------------------------


def fixed(label: str, size: int) -> bytes:
    """Deterministic bytes named by ``label``: stands in for os.urandom in every vector."""
    return hashlib.shake_256(b"modelseal test vectors/" + label.encode()).digest(size)


MEK_A = fixed("MEK A", 32)
MEK_B = fixed("MEK B", 32)
MEK_16 = fixed("MEK 16", 16)
FILE_KEY_X = fixed("file key for x25519", 32)
SALT_1 = fixed("salt 1", 32)
SALT_2 = fixed("salt 2", 32)
SCRYPT_SALT = fixed("scrypt salt", 16)
SCRYPT_SALT_2 = fixed("scrypt salt 2", 16)
PASSPHRASE = "correct horse battery staple"
X25519_A = X25519PrivateKey.from_private_bytes(fixed("x25519 identity A", 32))
X25519_B = X25519PrivateKey.from_private_bytes(fixed("x25519 identity B", 32))
EPHEMERAL = X25519PrivateKey.from_private_bytes(fixed("x25519 ephemeral", 32))
OWNER = Ed25519PrivateKey.from_private_bytes(fixed("owner signer", 32))
DEVICE_SLOT = "2"  # a qaic device number, the optional second argument of an x25519 stanza
NOT_AN_OBJECT = b'["tiny-net"]'  # metadata that is valid JSON but not the object the spec requires

SMALL = fixed("plaintext small", 300)  # one chunk
TWO = fixed("plaintext two chunks", CHUNK + 100)  # a full chunk and a short final one
THREE = fixed("plaintext three chunks", 2 * CHUNK + 1000)  # two full chunks and a short final one
EXACT = fixed("plaintext exact multiple", 2 * CHUNK)  # the final chunk is full, no empty chunk follows
FOLDER = [  # sorted like modelseal.seal sorts a folder walk
    ("config.json", b'{"architectures":["TinyNet"],"hidden_size":16}\n'),
    ("model.bin", fixed("plaintext folder weights", 5000)),
    ("tokenizer/vocab.txt", b"[PAD]\n[UNK]\nhello\nworld\n"),
]


# --- HPKE base mode, RFC 9180, with a caller-chosen ephemeral key ---------------------------------

_KEM_SUITE = b"KEM" + struct.pack(">H", 0x0020)  # DHKEM(X25519, HKDF-SHA256)
_HPKE_SUITE = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0002)  # + HKDF-SHA256, AES-256-GCM


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = struct.pack(">H", length) + b"HPKE-v1" + suite + label + info
    return HKDFExpand(SHA256(), length, labeled).derive(prk)


def hpke_seal(
    recipient: X25519PublicKey, ephemeral: X25519PrivateKey, info: bytes, plaintext: bytes
) -> bytes:
    """SetupBaseS + Seal (sequence 0, empty aad); returns enc || ciphertext like cryptography's Suite."""
    enc = public_bytes(ephemeral.public_key())
    dh = ephemeral.exchange(recipient)
    eae_prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    shared = _labeled_expand(_KEM_SUITE, eae_prk, b"shared_secret", enc + public_bytes(recipient), 32)
    psk_id_hash = _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(_HPKE_SUITE, shared, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE, secret, b"key", context, 32)
    nonce = _labeled_expand(_HPKE_SUITE, secret, b"base_nonce", context, 12)
    return enc + AESGCM(key).encrypt(nonce, plaintext, b"")


# --- stanzas ----------------------------------------------------------------------------------------


def mek_stanza(key: bytes) -> Stanza:
    (stanza,) = MEK(key).wrap(key)
    return stanza


def x25519_stanza(identity: X25519PrivateKey, file_key: bytes, slot: str | None = None) -> Stanza:
    """args [fingerprint], or [fingerprint, device slot label] as X25519Recipient(slot=...) writes."""
    public = identity.public_key()
    body = hpke_seal(public, EPHEMERAL, b"modelseal/v1 x25519", file_key)
    label = (slot.encode(),) if slot is not None else ()
    return Stanza("x25519", (fingerprint(public_bytes(public)), *label), body)


@contextlib.contextmanager
def pinned_urandom(values: Sequence[bytes]) -> Iterator[None]:
    """Make os.urandom return exactly ``values``, in order, and fail on any other call."""
    queue = list(values)

    def fake(n: int) -> bytes:
        if not queue or len(queue[0]) != n:
            raise AssertionError(f"unexpected os.urandom({n}) call")
        return queue.pop(0)

    with mock.patch("os.urandom", fake):
        yield
    if queue:
        raise AssertionError(f"{len(queue)} pinned random values were not used")


def scrypt_stanza(file_key: bytes, log_n: int = 10, salt: bytes = SCRYPT_SALT) -> Stanza:
    # The library's own wrap, with its salt pinned, rather than a re-implementation here.
    with pinned_urandom([salt]):
        (stanza,) = Passphrase(PASSPHRASE.encode(), log_n).wrap(file_key)
    return stanza


def vault_stanza() -> Stanza:
    # Reserved type: a v1 reader cannot unwrap it and must skip it, but must still check its MAC.
    return Stanza("vault", (b"models/tiny-net", b"3"), fixed("vault opaque body", 60))


# --- assembling a sealed model ---------------------------------------------------------------------


@dataclass
class Sealed:
    """A sealed model and what the failure vectors need to edit it."""

    data: bytearray
    header: Header
    keys: FileKeys
    plaintext: bytes

    @property
    def core_length(self) -> int:
        return len(self.header.core_bytes)

    @property
    def mac_offset(self) -> int:
        return PREAMBLE_SIZE + self.core_length

    @property
    def signature_offset(self) -> int:
        return self.mac_offset + MAC_SIZE

    def stanza_offset(self, index: int) -> int:
        pos = self.signature_offset + len(self.header.signature) + 2
        return pos + sum(len(s.encode()) for s in self.header.stanzas[:index])

    def stanza_mac_offset(self, index: int) -> int:
        stanza = self.header.stanzas[index]
        return self.stanza_offset(index) + len(stanza.encode_unauthenticated())

    @property
    def cipher(self) -> PayloadCipher:
        core = self.header.core
        return PayloadCipher(self.keys.payload, core.chunk_size, core.payload_length)

    def chunk_span(self, index: int) -> slice:
        start = self.header.header_length + self.cipher.cipher_offset(index)
        return slice(start, start + self.cipher.cipher_length(index))

    def chunk(self, index: int) -> bytes:
        return bytes(self.data[self.chunk_span(index)])

    def plain_chunk(self, index: int) -> bytes:
        start = index * self.header.core.chunk_size
        return self.plaintext[start : start + self.cipher.plain_length(index)]


def seal(
    file_key: bytes,
    files: Sequence[tuple[str, bytes]],
    stanzas: Sequence[Stanza],
    *,
    salt: bytes = SALT_1,
    folder: bool = False,
    signer: Ed25519PrivateKey | None = None,
    chunk_size: int = CHUNK,
    plan: manifest.Manifest | None = None,
    metadata: bytes = b"{}",
) -> Sealed:
    """Seal like modelseal.seal does with header_room=0 and metadata=None, from in-memory files.

    ``metadata`` is the raw core field, so a failure vector can store what modelseal.seal never writes.
    """
    entries, payload_length = manifest.layout([(name, len(data), False) for name, data in files])
    plan = plan or manifest.Manifest(entries, folder)
    plaintext = bytearray(payload_length)
    for entry, (_, data) in zip(entries, files, strict=True):
        plaintext[entry.offset : entry.offset + entry.size] = data
    keys = derive_file_keys(file_key, salt)
    core = Core(
        salt=salt,
        chunk_size=chunk_size,
        payload_length=payload_length,
        metadata=metadata,
        manifest=manifest.seal(keys.manifest, manifest.encode(plan)),
        signer_key=raw_public(signer.public_key()) if signer else b"",
        payload_digest=bytes(DIGEST_SIZE) if signer else b"",
    )
    signature = bytes(SIGNATURE_SIZE) if signer else b""
    header_length = header_length_for(assemble(file_key, core, stanzas, 0, signature).used_length, 0)
    cipher = PayloadCipher(keys.payload, chunk_size, payload_length)
    payload = bytearray(core.payload_ciphertext_length)
    view = memoryview(payload)
    for i in range(cipher.count):
        start = i * chunk_size
        plain = memoryview(plaintext)[start : start + cipher.plain_length(i)]
        at = cipher.cipher_offset(i)
        cipher.encrypt_into(i, plain, view[at : at + cipher.cipher_length(i)])
    if signer:
        core = dataclasses.replace(core, payload_digest=hashlib.sha256(payload).digest())
        signature = sign_core(signer, VERSION, core.encode())
    header = assemble(file_key, core, stanzas, header_length, signature)
    return Sealed(bytearray(header.encode() + payload), header, keys, bytes(plaintext))


def single(
    file_key: bytes,
    data: bytes,
    stanzas: Sequence[Stanza] | None = None,
    *,
    salt: bytes = SALT_1,
    signer: Ed25519PrivateKey | None = None,
    plan: manifest.Manifest | None = None,
    metadata: bytes = b"{}",
) -> Sealed:
    """One file named model.onnx; by default its only stanza is the mek stanza naming ``file_key``."""
    chosen = [mek_stanza(file_key)] if stanzas is None else stanzas
    return seal(
        file_key, [("model.onnx", data)], chosen, salt=salt, signer=signer, plan=plan, metadata=metadata
    )


# --- edits for the failure vectors ------------------------------------------------------------------


def flip(data: bytearray, offset: int, bit: int = 0) -> bytearray:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return out


def put(data: bytearray, offset: int, value: bytes) -> bytearray:
    out = bytearray(data)
    out[offset : offset + len(value)] = value
    return out


def reencrypt(s: Sealed, index: int, last: bool) -> bytearray:
    """Chunk ``index`` re-encrypted under the right key with the given last-chunk flag."""
    sealed = AESGCM(s.keys.payload).encrypt(chunk_nonce(index, last), s.plain_chunk(index), None)
    return put(s.data, s.chunk_span(index).start, sealed)


# --- the vectors -------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pem_line(key: X25519PrivateKey) -> str:
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return pem.replace("\n", "\\n")  # one line; readers turn "\n" back into line breaks


@dataclass
class Vector:
    name: str
    expect: str
    data: bytes
    comment: str
    file_key: bytes | None = None
    identity: X25519PrivateKey | None = None
    passphrase: str | None = None
    signer: Ed25519PrivateKey | None = None
    payload: list[tuple[str, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        lines = [f"expect: {self.expect}"]
        if self.file_key is not None:
            lines.append(f"file key: {self.file_key.hex()}")
        if self.identity is not None:
            lines.append(f"identity: {pem_line(self.identity)}")
        if self.passphrase is not None:
            lines.append(f"passphrase: {self.passphrase}")
        if self.signer is not None:
            lines.append(f"signer: {ed25519_public_string(self.signer.public_key())}")
        lines += [f"payload: {name}={sha256_hex(data)}" for name, data in self.payload]
        lines.append(f"comment: {self.comment}")
        return ("\n".join(lines) + "\n\n").encode() + self.data


def mek_vector(name: str, expect: str, data: bytes | bytearray, comment: str, key: bytes = MEK_A) -> Vector:
    return Vector(name, expect, bytes(data), comment, file_key=key)


def success_vectors() -> list[Vector]:
    out = []
    s = single(MEK_A, THREE)
    out.append(
        Vector(
            "success_single_file",
            "success",
            bytes(s.data),
            "one file, 32-byte MEK, three chunks (two full, one short final)",
            file_key=MEK_A,
            payload=[("model.onnx", THREE)],
        )
    )
    s = single(MEK_A, b"")
    out.append(
        Vector(
            "success_empty_file",
            "success",
            bytes(s.data),
            "an empty file: the payload is one empty final chunk (16 bytes of tag)",
            file_key=MEK_A,
            payload=[("model.onnx", b"")],
        )
    )
    s = single(MEK_A, EXACT)
    out.append(
        Vector(
            "success_exact_chunk_multiple",
            "success",
            bytes(s.data),
            "payload of exactly two chunks: the second, full, chunk is the final one",
            file_key=MEK_A,
            payload=[("model.onnx", EXACT)],
        )
    )
    s = seal(MEK_A, FOLDER, [mek_stanza(MEK_A)], folder=True)
    out.append(
        Vector(
            "success_folder",
            "success",
            bytes(s.data),
            "a folder of three files, one nested; each starts on a 4096-byte boundary",
            file_key=MEK_A,
            payload=list(FOLDER),
        )
    )
    s = single(FILE_KEY_X, SMALL, [x25519_stanza(X25519_A, FILE_KEY_X)])
    out.append(
        Vector(
            "success_x25519",
            "success",
            bytes(s.data),
            "random file key wrapped with HPKE to one X25519 recipient, no mek stanza",
            identity=X25519_A,
            payload=[("model.onnx", SMALL)],
        )
    )
    s = single(FILE_KEY_X, SMALL, [x25519_stanza(X25519_A, FILE_KEY_X, slot=DEVICE_SLOT)])
    out.append(
        Vector(
            "success_x25519_slot",
            "success",
            bytes(s.data),
            f'x25519 stanza with a second argument, device slot "{DEVICE_SLOT}" (inside the stanza MAC); '
            "the identity matches on the fingerprint alone",
            identity=X25519_A,
            payload=[("model.onnx", SMALL)],
        )
    )
    s = single(FILE_KEY_X, SMALL, [scrypt_stanza(FILE_KEY_X)])
    out.append(
        Vector(
            "success_scrypt",
            "success",
            bytes(s.data),
            "random file key wrapped to a passphrase, scrypt log2(N) = 10",
            passphrase=PASSPHRASE,
            payload=[("model.onnx", SMALL)],
        )
    )
    s = single(MEK_A, TWO, signer=OWNER)
    out.append(
        Vector(
            "success_signed",
            "success",
            bytes(s.data),
            "owner-signed model; open with the signer check",
            file_key=MEK_A,
            signer=OWNER,
            payload=[("model.onnx", TWO)],
        )
    )
    s = single(MEK_16, SMALL)
    out.append(
        Vector(
            "success_mek16",
            "success",
            bytes(s.data),
            "16-byte MEK (qaic MEK.dat); the derived keys are still 32 bytes",
            file_key=MEK_16,
            payload=[("model.onnx", SMALL)],
        )
    )
    stanzas = [
        mek_stanza(FILE_KEY_X),
        vault_stanza(),
        Stanza("future-kind", (b"\x00",), b"opaque"),
        x25519_stanza(X25519_B, FILE_KEY_X),
        x25519_stanza(X25519_A, FILE_KEY_X),
    ]
    s = single(FILE_KEY_X, SMALL, stanzas)
    out.append(
        Vector(
            "success_many_recipients",
            "success",
            bytes(s.data),
            "mek, vault, an unknown type and two x25519 stanzas; the vault and unknown "
            "stanzas are skipped but their MACs checked; identity A's stanza is last",
            identity=X25519_A,
            payload=[("model.onnx", SMALL)],
        )
    )
    s = single(MEK_A, SMALL, [])
    out.append(
        Vector(
            "success_no_stanzas",
            "success",
            bytes(s.data),
            "no recipient stanza at all: the MEK still opens it (key commitment by the header MAC)",
            file_key=MEK_A,
            payload=[("model.onnx", SMALL)],
        )
    )
    return out


def header_failures() -> list[Vector]:
    hf = "header failure"
    out = []
    s = single(MEK_A, SMALL)
    out.append(
        mek_vector(
            "header_core_bit_flipped",
            hf,
            flip(s.data, PREAMBLE_SIZE + 5, 3),
            "a bit of the core salt flipped: the header MAC fails",
        )
    )
    out.append(
        mek_vector(
            "header_mac_flipped", hf, flip(s.data, s.mac_offset + 31, 7), "last bit of the header MAC flipped"
        )
    )
    out.append(
        mek_vector(
            "header_stanza_mac_bad",
            hf,
            flip(s.data, s.stanza_mac_offset(0)),
            "the mek stanza's MAC is wrong; the header MAC itself verifies",
        )
    )
    out.append(
        mek_vector(
            "header_stanza_arg_changed",
            hf,
            flip(s.data, s.stanza_mac_offset(0) - 5),
            "a bit of the mek stanza's key id flipped: its MAC fails",
        )
    )
    out.append(
        mek_vector(
            "header_unsupported_version",
            hf,
            put(s.data, 8, struct.pack(">H", 2)),
            "format version 2: an explicit unsupported-version error",
        )
    )
    out.append(mek_vector("header_bad_magic", hf, put(s.data, 1, b"MSEAK"), "the magic is not modelseal's"))
    out.append(
        mek_vector(
            "header_reserved_nonzero",
            hf,
            put(s.data, 10, b"\x00\x01"),
            "the reserved preamble field is not zero",
        )
    )
    out.append(
        mek_vector(
            "header_nonzero_padding",
            hf,
            put(s.data, s.header.header_length - 1, b"\x01"),
            "the last byte of the header padding is 1",
        )
    )
    out.append(
        mek_vector(
            "header_chunk_size_changed",
            hf,
            put(s.data, PREAMBLE_SIZE + 33, struct.pack(">I", 8192)),
            "chunk size 4096 -> 8192 (in bounds): the header MAC fails",
        )
    )
    out.append(
        mek_vector(
            "header_chunk_size_too_small",
            hf,
            put(s.data, PREAMBLE_SIZE + 33, struct.pack(">I", 2048)),
            "chunk size 2048, below the 4096 bound: rejected while parsing",
        )
    )
    # Cut the file to match the new length, so the header MAC is the only check that can fail.
    lowered = put(s.data, PREAMBLE_SIZE + 37, struct.pack(">Q", s.header.core.payload_length - 16))[:-16]
    out.append(
        mek_vector(
            "header_payload_length_changed",
            hf,
            lowered,
            "payload length lowered by 16 and the file cut to match: the header MAC fails",
        )
    )
    shrunk = put(s.data, 12, struct.pack(">I", s.header.header_length - 16))
    out.append(
        mek_vector(
            "header_length_changed",
            hf,
            shrunk,
            "header length lowered by 16 (still past the stanzas): the header MAC fails",
        )
    )
    out.append(mek_vector("header_truncated", hf, s.data[:1000], "the file ends inside its header"))
    signed = single(MEK_A, SMALL, signer=OWNER)
    bad = flip(signed.data, signed.signature_offset + 10)
    out.append(
        Vector(
            "header_signature_bad",
            hf,
            bytes(bad),
            "owner signature altered (it is outside the header MAC); opened with the signer check",
            file_key=MEK_A,
            signer=OWNER,
        )
    )
    other = Ed25519PrivateKey.from_private_bytes(fixed("another signer", 32))
    out.append(
        Vector(
            "header_signature_other_signer",
            hf,
            bytes(signed.data),
            "a correctly signed model checked against another owner key",
            file_key=MEK_A,
            signer=other,
        )
    )
    scrypt = scrypt_stanza(FILE_KEY_X)
    too_high = MAX_LOG_N + 1
    hard = Stanza("scrypt", (scrypt.args[0], bytes([too_high])), scrypt.body)
    s = single(FILE_KEY_X, SMALL, [hard])
    out.append(
        Vector(
            "header_scrypt_work_factor_too_high",
            hf,
            bytes(s.data),
            f"scrypt stanza with log2(N) = {too_high} (bound {MAX_LOG_N}), MAC valid: "
            "refused before scrypt runs",
            passphrase=PASSPHRASE,
        )
    )
    # Both stanzas wrap the right file key, so only the one-scrypt-stanza rule can refuse the file.
    two = [scrypt, scrypt_stanza(FILE_KEY_X, salt=SCRYPT_SALT_2)]
    s = single(FILE_KEY_X, SMALL, two)
    out.append(
        Vector(
            "header_two_scrypt_stanzas",
            hf,
            bytes(s.data),
            "two valid scrypt stanzas for the right passphrase, MACs valid: refused before scrypt runs",
            passphrase=PASSPHRASE,
        )
    )
    short = x25519_stanza(X25519_A, FILE_KEY_X)
    short = Stanza(short.type, short.args, short.body[:-1])
    s = single(FILE_KEY_X, SMALL, [short])
    out.append(
        Vector(
            "header_x25519_body_length",
            hf,
            bytes(s.data),
            "x25519 stanza body one byte short (79), MAC valid: refused before HPKE",
            identity=X25519_A,
        )
    )
    evil = manifest.Manifest([manifest.ManifestEntry("../model.onnx", 0, len(SMALL))], False)
    s = single(MEK_A, SMALL, plan=evil)
    out.append(
        mek_vector(
            "header_manifest_path_escape",
            hf,
            s.data,
            "authenticated manifest naming ../model.onnx: refused before any chunk",
        )
    )
    s = single(MEK_A, SMALL, metadata=NOT_AN_OBJECT)
    out.append(
        mek_vector(
            "header_metadata_not_object",
            hf,
            s.data,
            f"metadata {NOT_AN_OBJECT.decode()} is JSON but not an object, header MAC valid: "
            "refused while parsing",
        )
    )
    return out


def payload_failures() -> list[Vector]:
    pf = "payload failure"
    out = []
    s = single(MEK_A, TWO)
    cut = s.chunk_span(0).stop
    out.append(
        mek_vector(
            "payload_truncated_at_chunk",
            pf,
            s.data[:cut],
            "the final chunk removed: the file ends on a chunk boundary",
        )
    )
    out.append(mek_vector("payload_truncated_one_byte", pf, s.data[:-1], "the last byte removed"))
    out.append(mek_vector("payload_appended_byte", pf, s.data + b"\x00", "one zero byte appended"))
    out.append(
        mek_vector(
            "payload_bit_flipped",
            pf,
            flip(s.data, s.chunk_span(0).start + 100, 2),
            "a bit of the first chunk's ciphertext flipped",
        )
    )
    out.append(
        mek_vector(
            "payload_final_chunk_not_flagged",
            pf,
            reencrypt(s, 1, last=False),
            "the final chunk re-encrypted under the right key with last flag 0: only the flag is wrong",
        )
    )
    out.append(
        mek_vector(
            "payload_first_chunk_flagged_last",
            pf,
            reencrypt(s, 0, last=True),
            "the first of two chunks encrypted with last flag 1",
        )
    )
    other = single(MEK_A, TWO, salt=SALT_2)
    spliced = put(s.data, s.chunk_span(1).start, other.chunk(1))
    out.append(
        mek_vector(
            "payload_chunk_from_other_salt",
            pf,
            spliced,
            "final chunk taken from the same plaintext sealed with the same MEK and another salt",
        )
    )
    s = single(MEK_A, THREE)
    swapped = put(put(s.data, s.chunk_span(0).start, s.chunk(1)), s.chunk_span(1).start, s.chunk(0))
    out.append(mek_vector("payload_chunks_swapped", pf, swapped, "the two full chunks swapped"))
    out.append(
        mek_vector(
            "payload_chunk_duplicated",
            pf,
            put(s.data, s.chunk_span(1).start, s.chunk(0)),
            "chunk 0 copied over chunk 1 (file size unchanged)",
        )
    )
    s = single(MEK_A, b"")
    out.append(
        mek_vector(
            "payload_empty_without_chunk",
            pf,
            s.data[: s.header.header_length],
            "empty payload stored as nothing instead of one empty final chunk",
        )
    )
    return out


def no_match_vectors() -> list[Vector]:
    nm = "no match"
    out = []
    s = single(MEK_A, SMALL)
    out.append(mek_vector("nomatch_wrong_mek", nm, s.data, "sealed with MEK A, opened with MEK B", key=MEK_B))
    s = single(FILE_KEY_X, SMALL, [x25519_stanza(X25519_A, FILE_KEY_X)])
    out.append(
        Vector(
            "nomatch_wrong_x25519",
            nm,
            bytes(s.data),
            "sealed to X25519 identity A, opened with identity B",
            identity=X25519_B,
        )
    )
    s = single(FILE_KEY_X, SMALL, [scrypt_stanza(FILE_KEY_X)])
    out.append(
        Vector(
            "nomatch_wrong_passphrase",
            nm,
            bytes(s.data),
            "sealed to a passphrase, opened with another",
            passphrase="incorrect horse",
        )
    )
    return out


def all_vectors() -> list[Vector]:
    return success_vectors() + header_failures() + payload_failures() + no_match_vectors()


# --- self-check against the real sealer ---------------------------------------------------------------


def _write_single(data: bytes) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        (root / "model.onnx").write_bytes(data)
        return root / "model.onnx"

    return make


def _write_folder(root: Path) -> Path:
    for name, data in FOLDER:
        (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "src" / name).write_bytes(data)
    return root / "src"


def _sealer(**options: object) -> Callable[[Path, Path], object]:
    def run(src: Path, dst: Path) -> object:
        return modelseal.seal(src, dst, chunk_size=CHUNK, header_room=0, **options)  # type: ignore[arg-type]

    return run


def check_against_sealer() -> None:
    """The hand-assembled files must be exactly what modelseal.seal writes with the same randomness.

    The x25519 vectors cannot be checked this way (cryptography's HPKE draws its own ephemeral key);
    only their stanza arguments, with and without a device slot, are compared with the library's.
    """
    scrypt = single(FILE_KEY_X, SMALL, [scrypt_stanza(FILE_KEY_X)])
    cases = [
        (_write_single(THREE), [SALT_1], _sealer(mek=MEK_A), single(MEK_A, THREE)),
        (_write_single(b""), [SALT_1], _sealer(mek=MEK_A), single(MEK_A, b"")),
        (_write_folder, [SALT_1], _sealer(mek=MEK_A), seal(MEK_A, FOLDER, [mek_stanza(MEK_A)], folder=True)),
        (_write_single(TWO), [SALT_1], _sealer(mek=MEK_A, signer=OWNER), single(MEK_A, TWO, signer=OWNER)),
        # Without a MEK the sealer draws the file key first, then the salt, then the scrypt salt.
        (
            _write_single(SMALL),
            [FILE_KEY_X, SALT_1, SCRYPT_SALT],
            _sealer(recipients=[Passphrase(PASSPHRASE.encode(), 10)]),
            scrypt,
        ),
    ]
    for make, randomness, run, expected in cases:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            src = make(root)
            with pinned_urandom(randomness):
                run(src, root / "out.mseal")
            if (root / "out.mseal").read_bytes() != expected.data:
                raise SystemExit(f"gen_vectors.py and modelseal.seal disagree on {src.name}")
    # The x25519 bodies differ (ephemeral key), but the stanza arguments must be the library's.
    for slot in (None, DEVICE_SLOT):
        (library,) = X25519Recipient(X25519_A.public_key(), slot=slot).wrap(FILE_KEY_X)
        if library.args != x25519_stanza(X25519_A, FILE_KEY_X, slot=slot).args:
            raise SystemExit(f"gen_vectors.py and modelseal disagree on x25519 stanza args (slot {slot})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .vec files")
    args = parser.parse_args(argv)
    check_against_sealer()
    args.out.mkdir(parents=True, exist_ok=True)
    vectors = all_vectors()
    if len({v.name for v in vectors}) != len(vectors):
        raise SystemExit("duplicate vector name")
    for v in vectors:
        (args.out / f"{v.name}.vec").write_bytes(v.encode())
    total = sum(len(v.encode()) for v in vectors)
    print(f"wrote {len(vectors)} vectors ({total} bytes) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
