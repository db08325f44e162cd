"""The release MAC input and HPKE info, built by hand from docs/vault-api.md, byte for byte."""

from __future__ import annotations

import struct

from modelseal.keyrelease import wire


def field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def test_mac_input_matches_the_documented_layout() -> None:
    wrapped, nonce, public = bytes(range(60)), b"\x01" * 16, b"\x02" * 32
    expected = (
        b"modelseal vault release mac v1\x00"
        + field(b"default")
        + field(b"cam-17")
        + field(b"models-2026")
        + b"\x00\x00\x00\x04\x00\x00\x00\x02"
        + field(wrapped)
        + b"\x00\x00\x00\x08"
        + (1_700_000_000).to_bytes(8, "big")
        + field(nonce)
        + field(public)
    )
    built = wire.mac_input(
        domain="default",
        device="cam-17",
        key_name="models-2026",
        key_version=2,
        wrapped=wrapped,
        timestamp=1_700_000_000,
        nonce=nonce,
        ephemeral_public=public,
    )
    assert built == expected and len(wire.MAC_LABEL) == 31
    # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    a = wire.hpke_info(domain="d", device="ab", key_name="c", key_version=1, nonce=nonce)
    b = wire.hpke_info(domain="d", device="a", key_name="bc", key_version=1, nonce=nonce)
    assert a != b and a.startswith(b"modelseal vault release hpke v1\x00" + field(b"d") + field(b"ab"))
