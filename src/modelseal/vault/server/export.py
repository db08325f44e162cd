"""Master-key export, sealed to a guard: the only way a master key leaves the vault.

Off by default (`vault serve --allow-export`), admin only, audited with the guard key's
fingerprint. Every version of the key is HPKE-sealed (RFC 9180 base mode, the release's suite) in
one message to the guard's X25519 public key (the `ms-x25519:` recipient `modelseal identity`
prints), so only the holder of the guard identity can open the bundle, on another machine. The
bundle is JSON; its HPKE info binds every field a reader acts on, so a bundle whose domain, key
name, type, versions or guard was edited does not open:

    info      = "modelseal vault key export v1" 0x00
                u32be(len) || domain, u32be(len) || key_name, u32be(len) || key_type,
                u32be(4) || u32be(min_decryption_version),
                u32be(4 * n) || u32be(version_1) ... u32be(version_n),
                u32be(32) || SHA-256(guard public key), u32be(len) || exported
    plaintext = key(version_1) || ... || key(version_n)          (32 bytes each)

``open_bundle(bundle, identity)`` is the guard's side; the route is in export_api.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ...errors import FormatError, IntegrityError, KeyFileError, NoMatchingIdentityError
from ...fileio import read_small_file
from ...keyfiles import X25519_PREFIX, parse_recipient
from ...keyrelease import wire
from ...recipients import X25519Identity
from ..errors import KeyServiceError

# The guard's side (open_bundle) needs only `cryptography`: storage and the web framework are
# imported where the vault uses them, so a guard machine needs no `vault` extra.
if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .callers import Principal
    from .store import Store

FORMAT = "modelseal-vault-key-export/1"
INFO_LABEL = b"modelseal vault key export v1\x00"
KEY_SIZES = {"aes256-gcm": 32}
ENC_SIZE, TAG_SIZE = 32, 16
MAX_VERSIONS = 100_000
# 100,000 versions: ~4.3 MB of base64 keys and ~0.7 MB of version numbers, with room to spare.
MAX_BUNDLE = 8 << 20
MAX_RECIPIENT_TEXT = 128
EXPORT_ROLES = ("admin",)


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def guard_fingerprint(public_key: X25519PublicKey) -> str:
    return "sha256:" + hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def export_info(
    *,
    domain: str,
    key_name: str,
    key_type: str,
    min_decryption_version: int,
    versions: list[int],
    guard: str,
    exported: str,
) -> bytes:
    return INFO_LABEL + b"".join(
        _field(v)
        for v in (
            domain.encode(),
            key_name.encode(),
            key_type.encode(),
            struct.pack(">I", min_decryption_version),
            b"".join(struct.pack(">I", v) for v in versions),
            bytes.fromhex(guard.removeprefix("sha256:")),
            exported.encode(),
        )
    )


def parse_guard(text: str) -> X25519PublicKey:
    """The guard's recipient string; only the text form (the server never reads a path)."""
    if not isinstance(text, str) or len(text) > MAX_RECIPIENT_TEXT or not text.startswith(X25519_PREFIX):
        raise KeyServiceError(
            f"guard_public must be an {X25519_PREFIX} recipient string, as `modelseal identity` prints",
            code="invalid_guard",
        )
    try:
        return parse_recipient(text).public_key
    except KeyFileError as e:
        raise KeyServiceError(f"guard_public: {e}", code="invalid_guard") from None


def seal_bundle(
    *,
    domain: str,
    key_name: str,
    key_type: str,
    min_decryption_version: int,
    materials: dict[int, bytes],
    guard: X25519PublicKey,
) -> dict[str, Any]:
    versions = sorted(materials)
    header: dict[str, Any] = {
        "format": FORMAT,
        "domain": domain,
        "key_name": key_name,
        "key_type": key_type,
        "min_decryption_version": min_decryption_version,
        "versions": versions,
        "guard": guard_fingerprint(guard),
        "exported": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    info = export_info(**{k: v for k, v in header.items() if k != "format"})
    try:
        sealed = wire.SUITE.encrypt(b"".join(materials[v] for v in versions), guard, info=info)
    except ValueError:
        # A low-order point gives an all-zero shared secret; cryptography refuses it.
        raise KeyServiceError("guard_public is not a usable X25519 key", code="invalid_guard") from None
    return {**header, "sealed": base64.b64encode(sealed).decode()}


def export_key(store: Store, who: Principal, name: str, guard: X25519PublicKey) -> dict[str, Any]:
    """One write transaction: read every version, seal them, append the audit record; the bundle is
    returned only once that record is committed."""

    from sqlalchemy import select

    from .schema import MasterKeyVersion

    def run(session: Session) -> dict[str, Any]:
        key = store._key(session, who, name)
        versions = list(
            session.execute(
                select(MasterKeyVersion.version)
                .where(MasterKeyVersion.key_id == key.id)
                .order_by(MasterKeyVersion.version)
            ).scalars()
        )
        if len(versions) > MAX_VERSIONS:
            raise KeyServiceError(
                f"key {name!r} has more than {MAX_VERSIONS} versions: too many to export",
                code="too_many_versions",
                status=409,
            )
        bundle = seal_bundle(
            domain=who.domain,
            key_name=key.name,
            key_type=key.type,
            min_decryption_version=key.min_decryption_version,
            materials={v: store._material(session, key, v) for v in versions},
            guard=guard,
        )
        store.audit.record(
            session,
            who.domain,
            "key.export",
            who.accessor,
            key=name,
            versions=versions,
            guard_fingerprint=bundle["guard"],
        )
        return bundle

    return store.operation(who, "key.export", name, run)


# --- the guard's side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedKey:
    domain: str
    key_name: str
    key_type: str
    min_decryption_version: int
    exported: str
    versions: dict[int, bytes] = field(repr=False)


def _text(body: dict[str, Any], name: str, limit: int = 128) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise FormatError(f"not a key export bundle: field {name!r} is missing or malformed")
    return value


def _version(value: object, name: str) -> int:
    if type(value) is not int or not 1 <= value <= 2**32 - 1:
        raise FormatError(f"not a key export bundle: field {name!r} is malformed")
    return value


def parse_bundle(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Check a bundle's shape (no key needed): its header fields and the sealed bytes."""
    if len(data) > MAX_BUNDLE:
        raise FormatError("not a key export bundle: too large")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FormatError("not a key export bundle: not JSON") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise FormatError(f"not a key export bundle (format {FORMAT!r} expected)")
    header: dict[str, Any] = {name: _text(body, name) for name in ("format", "domain", "key_name")}
    header["key_type"] = _text(body, "key_type", 32)
    if header["key_type"] not in KEY_SIZES:
        raise FormatError(f"key export bundle: unsupported key type {header['key_type']!r}")
    header["min_decryption_version"] = _version(body.get("min_decryption_version"), "min_decryption_version")
    versions = body.get("versions")
    if not isinstance(versions, list) or not 1 <= len(versions) <= MAX_VERSIONS:
        raise FormatError("not a key export bundle: field 'versions' is missing or malformed")
    header["versions"] = [_version(v, "versions") for v in versions]
    if any(a >= b for a, b in zip(header["versions"], header["versions"][1:], strict=False)):
        raise FormatError("not a key export bundle: versions are not strictly increasing")
    guard = _text(body, "guard", 71)
    if len(guard) != 71 or not guard.startswith("sha256:"):
        raise FormatError("not a key export bundle: field 'guard' is malformed")
    try:
        bytes.fromhex(guard[7:])
    except ValueError:
        raise FormatError("not a key export bundle: field 'guard' is malformed") from None
    header["guard"] = guard
    header["exported"] = _text(body, "exported", 64)
    try:
        sealed = base64.b64decode(_text(body, "sealed", MAX_BUNDLE), validate=True)
    except (binascii.Error, ValueError):
        raise FormatError("not a key export bundle: field 'sealed' is not base64") from None
    expected = ENC_SIZE + KEY_SIZES[header["key_type"]] * len(header["versions"]) + TAG_SIZE
    if len(sealed) != expected:
        raise FormatError("not a key export bundle: 'sealed' has the wrong length for its versions")
    return header, sealed


def read_bundle(path: str | os.PathLike[str]) -> bytes:
    return read_small_file(path, MAX_BUNDLE, "key export bundle", KeyFileError)


def open_bundle(bundle: bytes | str | os.PathLike[str], identity: X25519Identity) -> ExportedKey:
    """The guard's side: every version of the exported master key, checked against the bundle's
    header. ``bundle`` is its bytes, or a path to read them from."""
    data = bundle if isinstance(bundle, bytes) else read_bundle(Path(bundle))
    header, sealed = parse_bundle(data)
    if guard_fingerprint(identity.private_key.public_key()) != header["guard"]:
        raise NoMatchingIdentityError("this key export bundle is sealed to another guard key")
    info = export_info(**{k: v for k, v in header.items() if k != "format"})
    try:
        plain = wire.SUITE.decrypt(sealed, identity.private_key, info=info)
    except InvalidTag:
        raise IntegrityError(
            "key export bundle does not open: its header was altered or the sealed keys corrupted"
        ) from None
    size = KEY_SIZES[header["key_type"]]
    versions = {v: plain[i * size : (i + 1) * size] for i, v in enumerate(header["versions"])}
    return ExportedKey(
        header["domain"],
        header["key_name"],
        header["key_type"],
        header["min_decryption_version"],
        header["exported"],
        versions,
    )
