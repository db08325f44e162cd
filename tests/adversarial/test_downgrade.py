"""Downgrading header fields: each attempt is refused with no payload chunk decrypted.

Already covered elsewhere, and so not repeated here (docs/threat-model.md names the tests): every
single-bit flip of the header (tests/unit/test_tamper.py), version 1 -> 2, chunk size 4096 -> 8192,
payload length and header length changes (same file), chunk size below its bound, reserved field,
last-chunk flag cleared and first chunk flagged last (tests/vectors). Added here: version 0 and
0xFFFF, the cipher id, a smaller in-bound chunk size, the signed flag (signer key length), stanza
types renamed into one another, the scrypt work factor, the x25519 device slot, stanzas removed,
and the length fields of the core. Each case is what the edge host can do without a key, unless its
name says a key holder re-authored it (then only the check under test stands in the way).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import modelseal
from modelseal import memory
from modelseal.format.header import MAX_CHUNK_SIZE, PREAMBLE_SIZE, Stanza

from .conftest import CountingSuite
from .forge import (
    AEAD_AT,
    CHUNK_SIZE_AT,
    SIGNER_LENGTH_AT,
    Sample,
    attempt,
    encode_stanza,
    header_length,
    patch,
    reauthor,
    seal_sample,
    splice,
    with_preamble,
)

PASSPHRASE = b"correct horse"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """Signed, MEK + X25519 (slot "2") + passphrase (2^12), 8 KiB chunks: room to downgrade both in bounds."""
    return seal_sample(
        tmp_path_factory.mktemp("downgrade"),
        passphrase=PASSPHRASE,
        signed=True,
        slot="2",
        chunk_size=8192,
        log_n=12,
    )


def _unsigned_core_bytes(s: Sample) -> bytes:
    """The file with signer key length 0: signer key, digest and signature cut out, lengths fixed."""
    h = s.header
    core = dataclasses.replace(h.core, signer_key=b"", payload_digest=b"").encode()
    rest = struct.pack(">H", len(h.stanzas)) + b"".join(st.encode() for st in h.stanzas)
    region = with_preamble(s.data[:PREAMBLE_SIZE], core_length=len(core)) + core + h.mac + rest
    return region + bytes(h.header_length - len(region)) + s.payload


def _renamed(s: Sample, old: str, new: str) -> bytes:
    """Stanza ``old`` re-typed as ``new`` (same args, body and now-stale MAC)."""
    out = []
    for st in s.header.stanzas:
        kind = new if st.type == old else st.type
        out.append(encode_stanza(kind.encode(), st.args, st.body, st.mac))
    return splice(s, out)


def _edit_stanza(s: Sample, kind: str, change: Callable[[Stanza], Stanza]) -> bytes:
    out = []
    for st in s.header.stanzas:
        st2 = change(st) if st.type == kind else st
        out.append(encode_stanza(st2.type.encode(), st2.args, st2.body, st.mac))
    return splice(s, out)


def _only(s: Sample, *kinds: str) -> bytes:
    return splice(s, [st.encode() for st in s.header.stanzas if st.type in kinds])


def _scrypt_log_n(s: Sample, log_n: int) -> bytes:
    return _edit_stanza(s, "scrypt", lambda st: Stanza("scrypt", (st.args[0], bytes([log_n])), st.body))


def _field(at: int, fmt: str, value: int) -> Callable[[Sample], bytes]:
    return lambda s: patch(s.data, at, fmt, value)


@dataclass(frozen=True)
class Case:
    build: Callable[[Sample], bytes]
    who: str  # which identity opens: mek, x25519, passphrase
    expected: type[modelseal.ModelSealError]
    with_signer: bool = False
    # The owner signature is checked once the plaintext buffer exists (before any chunk): for that
    # step the buffer may be allocated, but it must be closed (zeroized) when open() fails.
    allocates: bool = False


CASES: dict[str, Case] = {
    # preamble
    "version-0": Case(lambda s: patch(s.data, 8, ">H", 0), "mek", modelseal.UnsupportedVersionError),
    "version-65535": Case(lambda s: patch(s.data, 8, ">H", 0xFFFF), "mek", modelseal.UnsupportedVersionError),
    "header-length-minus-room": Case(
        lambda s: (
            with_preamble(s.data, header_len=header_length(s.data) - 4096)[: header_length(s.data) - 4096]
            + s.payload
        ),
        "mek",
        modelseal.IntegrityError,
    ),
    "core-length-minus-1": Case(
        lambda s: with_preamble(s.data, core_length=len(s.header.core_bytes) - 1),
        "mek",
        modelseal.FormatError,
    ),
    "core-length-plus-1": Case(
        lambda s: with_preamble(s.data, core_length=len(s.header.core_bytes) + 1),
        "mek",
        modelseal.FormatError,
    ),
    # the cipher id
    **{f"aead-{v}": Case(_field(AEAD_AT, ">B", v), "mek", modelseal.FormatError) for v in (0, 2, 3, 255)},
    # chunk size: smaller and in bounds (the MAC), out of bounds (the parser)
    "chunk-size-4096": Case(
        lambda s: patch(s.data, CHUNK_SIZE_AT, ">I", 4096), "mek", modelseal.IntegrityError
    ),
    **{
        f"chunk-size-{v}": Case(_field(CHUNK_SIZE_AT, ">I", v), "mek", modelseal.FormatError)
        for v in (0, 1, 4095, MAX_CHUNK_SIZE + 1, 0xFFFFFFFF)
    },
    # the signed flag: signer key length
    "unsigned-edge-host": Case(_unsigned_core_bytes, "mek", modelseal.IntegrityError),
    "unsigned-edge-host-signer-check": Case(_unsigned_core_bytes, "mek", modelseal.IntegrityError, True),
    "unsigned-key-holder-signer-check": Case(
        lambda s: reauthor(
            s, core=dataclasses.replace(s.header.core, signer_key=b"", payload_digest=b""), signature=b""
        ),
        "mek",
        modelseal.SignatureError,
        True,
        True,
    ),
    **{
        f"signer-length-{v}": Case(_field(SIGNER_LENGTH_AT, ">B", v), "mek", modelseal.FormatError)
        for v in (1, 31, 33, 64, 255)
    },
    # stanza types renamed into one another (same length: the encoding stays well formed)
    "x25519-as-scrypt-passphrase": Case(
        lambda s: _renamed(s, "x25519", "scrypt"), "passphrase", modelseal.FormatError
    ),
    "x25519-as-x25518": Case(
        lambda s: _renamed(s, "x25519", "x25518"), "x25519", modelseal.NoMatchingIdentityError
    ),
    "x25519-as-x25518-mek": Case(lambda s: _renamed(s, "x25519", "x25518"), "mek", modelseal.IntegrityError),
    "scrypt-as-x25519": Case(lambda s: _renamed(s, "scrypt", "x25519"), "x25519", modelseal.IntegrityError),
    "scrypt-as-scrypu": Case(
        lambda s: _renamed(s, "scrypt", "scrypu"), "passphrase", modelseal.NoMatchingIdentityError
    ),
    "mek-as-mel": Case(lambda s: _renamed(s, "mek", "mel"), "mek", modelseal.IntegrityError),
    "mek-as-vault": Case(lambda s: _renamed(s, "mek", "vault"), "mek", modelseal.IntegrityError),
    # the scrypt work factor, lowered (and raised past its bound)
    "scrypt-log-n-12-to-10": Case(
        lambda s: _scrypt_log_n(s, 10), "passphrase", modelseal.NoMatchingIdentityError
    ),
    "scrypt-log-n-12-to-11": Case(
        lambda s: _scrypt_log_n(s, 11), "passphrase", modelseal.NoMatchingIdentityError
    ),
    "scrypt-log-n-9": Case(lambda s: _scrypt_log_n(s, 9), "passphrase", modelseal.FormatError),
    "scrypt-log-n-0": Case(lambda s: _scrypt_log_n(s, 0), "passphrase", modelseal.FormatError),
    # the x25519 device slot removed or changed
    "x25519-slot-removed": Case(
        lambda s: _edit_stanza(s, "x25519", lambda st: Stanza("x25519", st.args[:1], st.body)),
        "x25519",
        modelseal.IntegrityError,
    ),
    "x25519-slot-changed": Case(
        lambda s: _edit_stanza(s, "x25519", lambda st: Stanza("x25519", (st.args[0], b"0"), st.body)),
        "x25519",
        modelseal.IntegrityError,
    ),
    # stanzas removed: denies that recipient, never grants anything (SPEC §11, "Stanza set")
    "x25519-stanza-removed": Case(
        lambda s: _only(s, "mek", "scrypt"), "x25519", modelseal.NoMatchingIdentityError
    ),
    "scrypt-stanza-removed": Case(
        lambda s: _only(s, "mek", "x25519"), "passphrase", modelseal.NoMatchingIdentityError
    ),
    "mek-stanza-removed-wrong-mek": Case(
        lambda s: _only(s, "x25519", "scrypt"), "wrong-mek", modelseal.NoMatchingIdentityError
    ),
    # length fields inside the core
    "metadata-length-plus-1": Case(
        lambda s: _core_length_field(s, "metadata", 1), "mek", modelseal.FormatError
    ),
    "metadata-length-1MiB-plus-1": Case(
        lambda s: _core_length_field(s, "metadata", None), "mek", modelseal.FormatError
    ),
    "manifest-length-minus-1": Case(
        lambda s: _core_length_field(s, "manifest", -1), "mek", modelseal.FormatError
    ),
    "manifest-length-16MiB-plus-1": Case(
        lambda s: _core_length_field(s, "manifest", None), "mek", modelseal.FormatError
    ),
}


def _core_length_field(s: Sample, which: str, delta: int | None) -> bytes:
    """Change the metadata or manifest length field by ``delta`` (None: one past its bound)."""
    core = s.header.core
    metadata_at = PREAMBLE_SIZE + 46 + len(core.signer_key) + len(core.payload_digest)
    at = metadata_at if which == "metadata" else metadata_at + 4 + len(core.metadata)
    current = len(core.metadata) if which == "metadata" else len(core.manifest)
    bound = (1 << 20) if which == "metadata" else (16 << 20)
    return patch(s.data, at, ">I", bound + 1 if delta is None else current + delta)


@pytest.mark.parametrize("name", list(CASES))
def test_downgrade_is_refused_before_any_chunk(
    model: Sample,
    tmp_path: Path,
    name: str,
    hpke: CountingSuite,
    scrypt_runs: list[tuple[bytes, int]],
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    case = CASES[name]
    identities: dict[str, modelseal.Identity] = {
        "mek": modelseal.MEK(model.mek),
        "wrong-mek": modelseal.MEK(modelseal.keygen()),
        "x25519": model.identity,
        "passphrase": modelseal.Passphrase(PASSPHRASE),
    }
    identity = identities[case.who]
    data = case.build(model)
    assert data != model.data
    signer = model.signer.public_key() if case.with_signer and model.signer is not None else None
    err = attempt(tmp_path / "d.mseal", data, identity, signer=signer)
    assert type(err) is case.expected or (
        case.expected is modelseal.IntegrityError and type(err) is modelseal.SignatureError
    ), f"{name}: {err!r}"
    assert decrypt_calls == [], f"{name}: a payload chunk was decrypted"
    if case.allocates:
        assert all(b.closed for b in plain_buffers), f"{name}: a plaintext buffer was left open"
    else:
        assert plain_buffers == [], f"{name}: a plaintext buffer was allocated"
    assert len(scrypt_runs) <= 1  # a hostile header costs at most one bounded scrypt run
    assert all(10 <= log_n <= 20 for _, log_n in scrypt_runs)


def test_the_untouched_model_opens_with_every_identity(model: Sample, tmp_path: Path) -> None:
    """The control: what the cases above change is the only reason they fail."""
    signer = model.signer.public_key() if model.signer is not None else None
    for identity in (modelseal.MEK(model.mek), model.identity, modelseal.Passphrase(PASSPHRASE)):
        assert attempt(tmp_path / "ok.mseal", model.data, identity, signer=signer) is None
