"""The header parser on hostile input: only FormatError, never a crash or an unbounded allocation."""

from __future__ import annotations

import contextlib
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelseal
from modelseal.format.header import MAGIC, PREAMBLE, VERSION, parse_header

_VALID: bytes | None = None


def _valid_header() -> bytes:
    global _VALID
    if _VALID is None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            src = Path(d, "m.bin")
            src.write_bytes(b"w" * 5000)
            ident = modelseal.generate_identity()
            modelseal.seal(
                src,
                Path(d, "m.mseal"),
                [ident.recipient, modelseal.Passphrase(b"p", log_n=10)],
                mek=modelseal.keygen(),
                signer=modelseal.generate_signer(),
                chunk_size=4096,
                metadata={"k": "v"},
                header_room=0,
            )
            data = Path(d, "m.mseal").read_bytes()
        _VALID = data[: struct.unpack_from(">I", data, 12)[0]]
    return _VALID


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(modelseal.FormatError):
        parse_header(data)


@settings(max_examples=2000)
@given(
    st.binary(max_size=600),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_arbitrary_bytes_behind_a_valid_preamble(tail: bytes, header_length: int, core_length: int) -> None:
    region = PREAMBLE.pack(MAGIC, VERSION, 0, header_length, core_length) + tail
    with contextlib.suppress(modelseal.FormatError):
        parse_header(region)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=4095), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=8,
    )
)
def test_mutations_of_a_real_header(edits: list[tuple[int, int]]) -> None:
    region = bytearray(_valid_header())
    for offset, value in edits:
        region[offset % len(region)] = value
    try:
        header = parse_header(bytes(region))
    except modelseal.FormatError:
        return
    # What still parses re-encodes to the same bytes: no field is silently ignored.
    assert header.encode() == bytes(region)


def test_declared_lengths_do_not_drive_allocation(tmp_path: Path) -> None:
    path = tmp_path / "liar.mseal"
    path.write_bytes(PREAMBLE.pack(MAGIC, VERSION, 0, 64 << 20, 60 << 20) + os.urandom(100))
    tracemalloc.start()
    try:
        with pytest.raises(modelseal.FormatError):
            modelseal.inspect(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    path.write_bytes(PREAMBLE.pack(MAGIC, VERSION, 0, (64 << 20) + 1, 0) + os.urandom(100))
    with pytest.raises(modelseal.FormatError, match="header length out of bounds"):
        modelseal.inspect(path)


def test_unsupported_version_says_so(tmp_path: Path) -> None:
    path = tmp_path / "future.mseal"
    path.write_bytes(PREAMBLE.pack(MAGIC, 7, 0, 4096, 0) + bytes(4076))
    with pytest.raises(modelseal.UnsupportedVersionError, match="version 7"):
        modelseal.inspect(path)


@pytest.mark.parametrize("metadata", [b"[1, 2]", b'"text"', b"{not json", b"\xff\xfe", b""])
def test_metadata_must_be_a_json_object(metadata: bytes) -> None:
    from modelseal.format.header import Core, parse_core

    core = Core(salt=bytes(32), chunk_size=4096, payload_length=0, metadata=metadata, manifest=b"")
    with pytest.raises(modelseal.FormatError, match="metadata"):
        parse_core(core.encode())


def test_two_scrypt_stanzas_are_refused_before_any_scrypt() -> None:
    from modelseal.format.header import Stanza

    stanza = Stanza("scrypt", (bytes(16), bytes([20])), bytes(48))
    with pytest.raises(modelseal.FormatError, match="only one passphrase"):
        next(modelseal.Passphrase(b"pw").unwrap([stanza, stanza]))
