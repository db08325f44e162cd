"""open() and verify(): authenticate a sealed model and decrypt it into memory only."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import FormatError, IntegrityError, LeaseLostError, SignatureError, UsageError
from .fileio import readinto_full
from .format import manifest
from .format.header import PREAMBLE_SIZE, Header, parse_header, parse_preamble
from .format.manifest import Manifest, ManifestEntry
from .format.stream import PayloadCipher
from .header_auth import Unlocked, unlock
from .header_rewrite import recover_in_place
from .memlimits import check_room
from .memlock import LockPolicy
from .memory import PlainBuffer, PlainSink
from .payload import decrypt_stream, hash_stream, staging_bytes
from .progress import Progress, no_progress
from .recipients import Identity
from .signing import check_signature

Identities = Identity | Sequence[Identity]


def open_sealed_file(path: str | os.PathLike[str]) -> io.FileIO:
    """The sealed file, unbuffered; an in-place rewrap that was interrupted is finished first."""
    recover_in_place(path)
    try:
        return Path(path).open("rb", buffering=0)
    except OSError as e:
        raise UsageError(f"cannot open {path}: {e.strerror}") from None


def read_header(f: io.FileIO) -> Header:
    """Read and parse the header from the start of ``f``, reading no more than it declares."""
    preamble = memoryview(bytearray(PREAMBLE_SIZE))
    try:
        readinto_full(f, preamble)
    except FormatError:
        raise FormatError("not a modelseal sealed model (too short)") from None
    header_length, _ = parse_preamble(bytes(preamble))
    size = os.fstat(f.fileno()).st_size
    if size < header_length:
        raise FormatError("malformed header: file is shorter than its header")
    region = bytearray(header_length)
    region[:PREAMBLE_SIZE] = preamble
    readinto_full(f, memoryview(region)[PREAMBLE_SIZE:])
    return parse_header(bytes(region))


def check_size(f: io.FileIO, header: Header) -> None:
    expected = header.header_length + header.core.payload_ciphertext_length
    actual = os.fstat(f.fileno()).st_size
    if actual != expected:
        what = "truncated" if actual < expected else "followed by extra bytes"
        raise IntegrityError(
            f"integrity check failed: the sealed model is {what} ({actual} bytes, expected {expected})"
        )


def check_owner(
    f: io.FileIO, header: Header, signer: Ed25519PublicKey, progress: Progress = no_progress
) -> None:
    """Keyless: the signature over the core is the owner's and the payload hashes to what it signed."""
    check_signature(signer, header.core.signer_key, header.signature, header.version, header.core_bytes)
    check_size(f, header)
    f.seek(header.header_length)
    hasher = hashlib.sha256()
    hash_stream(f, hasher, progress)
    if not hmac.compare_digest(hasher.digest(), header.core.payload_digest):
        raise SignatureError("signature check failed: the payload is not the one the owner signed")


def _manifest(header: Header, unlocked: Unlocked) -> Manifest:
    return manifest.decode(
        manifest.unseal(unlocked.keys.manifest, header.core.manifest), header.core.payload_length
    )


class SealedModel:
    """An opened sealed model: its files in one private anonymous mapping, zeroized on close()."""

    def __init__(self, header: Header, contents: Manifest, plain: PlainSink) -> None:
        self._header = header
        self._entries = {e.name: e for e in contents.entries}
        self.is_folder = contents.folder
        self.locked = False  # True when the plaintext is mlocked (see open(mlock=...))
        self._plain = plain
        self._revoked: str | None = None
        self.metadata: dict[str, Any] = json.loads(header.core.metadata or b"{}")

    @property
    def closed(self) -> bool:
        return self._plain.closed

    @property
    def signed(self) -> bool:
        return bool(self._header.core.signer_key)

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[ManifestEntry]:
        """Name, offset in the plaintext, size and executable bit of every file."""
        return list(self._entries.values())

    def size(self, name: str | None = None) -> int:
        return self._entry(name).size

    def _entry(self, name: str | None) -> ManifestEntry:
        if self._revoked is not None:
            raise LeaseLostError(f"the model was closed because its lease ended: {self._revoked}")
        if self._plain.closed:
            raise ValueError("the sealed model is closed")
        if name is None:
            if len(self._entries) != 1:
                raise UsageError(f"this model holds {len(self._entries)} files: name the one to read")
            return next(iter(self._entries.values()))
        try:
            return self._entries[name]
        except KeyError:
            raise UsageError(f"no file named {name!r} in this sealed model") from None

    def read(self, name: str | None = None) -> memoryview:
        """The plaintext of one file as a read-only view into the private mapping (no copy)."""
        entry = self._entry(name)
        return self._plain.export(entry.offset, entry.offset + entry.size)

    def close(self) -> None:
        self._plain.close()

    def revoke(self, reason: str) -> None:
        """Zeroize now and make every later read raise LeaseLostError naming ``reason``."""
        self._revoked = reason
        self._plain.close()

    @property
    def revoked(self) -> str | None:
        """Why the lease ended, if it did (see :func:`modelseal.keep_lease`)."""
        return self._revoked

    def __enter__(self) -> SealedModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        plain = getattr(self, "_plain", None)
        if plain is not None:
            plain.close()


def open(
    path: str | os.PathLike[str],
    identity: Identities,
    *,
    signer: Ed25519PublicKey | None = None,
    mlock: bool | Literal["require"] = False,
    progress: Progress = no_progress,
) -> SealedModel:
    """Authenticate and decrypt a sealed model into memory. Nothing is released unless every check passes.

    ``mlock=True`` locks the plaintext in RAM before decrypting into it, so it can never be swapped
    to disk; if the kernel refuses (RLIMIT_MEMLOCK, no CAP_IPC_LOCK) a RuntimeWarning says so and the
    model opens unlocked. ``mlock="require"`` turns that refusal into a MemoryLockError, raised
    before any chunk is decrypted. ``SealedModel.locked`` tells which happened.
    """
    lock = None
    if mlock:
        lock = LockPolicy(require=mlock == "require", notice=_warn, require_hint='mlock="require"')
    return open_into(path, identity, signer=signer, progress=progress, lock=lock)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def open_into(
    path: str | os.PathLike[str],
    identity: Identities,
    *,
    signer: Ed25519PublicKey | None = None,
    progress: Progress = no_progress,
    allocate: Callable[[Manifest, int], PlainSink] | None = None,
    lock: LockPolicy | None = None,
) -> SealedModel:
    """open(), letting a runtime loader choose where the plaintext goes (private: modelseal.runtimes).

    ``allocate(manifest, payload_length)`` runs once the header and manifest are authenticated and
    before any chunk is decrypted; the sink it returns is zeroized by close() like a PlainBuffer.
    """
    with open_sealed_file(path) as f:
        header = read_header(f)
        unlocked = unlock(header, identity)
        check_size(f, header)
        contents = _manifest(header, unlocked)
        size = header.core.payload_length
        # The plaintext and the reader's staging buffers; a model that cannot fit fails here, as
        # does a required lock that cannot, before any allocation or decryption.
        check_room(size + staging_bytes(header.core.chunk_size), f"opening {Path(path).name}")
        want_lock = lock is not None and lock.precheck(size)
        plain = PlainBuffer(size) if allocate is None else allocate(contents, size)
        try:
            if want_lock and lock is not None:
                lock.lock([plain.view])
            _decrypt_payload(f, header, unlocked, plain.view, signer, progress)
        except BaseException:
            plain.close()
            raise
    model = SealedModel(header, contents, plain)
    model.locked = lock is not None and lock.locked
    return model


def _decrypt_payload(
    f: io.FileIO,
    header: Header,
    unlocked: Unlocked,
    sink: memoryview | None,
    signer: Ed25519PublicKey | None,
    progress: Progress,
) -> None:
    """Decrypt every chunk into ``sink`` (or scratch); with a signer, hash the ciphertext in the same pass."""
    hasher = None
    if signer is not None:
        check_signature(signer, header.core.signer_key, header.signature, header.version, header.core_bytes)
        hasher = hashlib.sha256()
    f.seek(header.header_length)
    cipher = PayloadCipher(unlocked.keys.payload, header.core.chunk_size, header.core.payload_length)
    decrypt_stream(f, cipher, sink, hasher, progress)
    if hasher is not None and not hmac.compare_digest(hasher.digest(), header.core.payload_digest):
        raise SignatureError("signature check failed: the payload is not the one the owner signed")


@dataclass(frozen=True)
class VerifyReport:
    path: Path
    header_authenticated: bool
    payload_authenticated: bool
    signature_checked: bool
    files: int | None
    payload_length: int


def verify(
    path: str | os.PathLike[str],
    identity: Identities | None = None,
    signer: Ed25519PublicKey | None = None,
    *,
    progress: Progress = no_progress,
) -> VerifyReport:
    """Check a sealed model completely without writing or keeping plaintext.

    With an identity: the header MACs and every payload chunk. With the owner's public key (no
    decryption key needed): the signature and the payload digest it covers. Raises on any failure.
    """
    if identity is None and signer is None:
        raise UsageError("nothing to verify against: give an identity and/or the owner's public key")
    with open_sealed_file(path) as f:
        header = read_header(f)
        files = None
        if identity is None:
            assert signer is not None
            check_owner(f, header, signer, progress)
        else:
            unlocked = unlock(header, identity)
            check_size(f, header)
            files = len(_manifest(header, unlocked).entries)
            _decrypt_payload(f, header, unlocked, None, signer, progress)
    return VerifyReport(
        Path(path),
        identity is not None,
        identity is not None,
        signer is not None,
        files,
        header.core.payload_length,
    )
