"""The Shamir root: the barrier's root is split into shares at init and the vault starts sealed.

`vault init --root shamir --shares N --threshold K --share-dir D` writes N shares, once, each to its
own 0600 file in D; the root itself is written nowhere. `vault serve` starts sealed; key routes
answer 503 until K distinct shares arrived through POST /v1/sys/unseal (no token, rate-limited).
The root then lives in memory only (as the keys derived from it); a restart or /v1/sys/seal
forgets it and the shares are needed again.

Field arithmetic is PyCryptodome's (``Crypto.Protocol.SecretSharing.Shamir``, GF(2^128)), which
shares 16-byte secrets. The 32-byte root is shared as two 16-byte halves, each with its own random
polynomial, evaluated at the same share index: fewer than K shares reveal nothing about either
half, so nothing about the root.

A share is one line of text::

    msvault1:<vault id, 32 hex>:<threshold>:<index>:<value, 64 hex>:<checksum, 8 hex>

The checksum (SHA-256 of everything before it, 4 bytes) catches typos and corrupted files before
anything is combined; it is not a security check. The security check is the key-check value stored
at init (an HMAC under a key derived from the root, compared with ``hmac.compare_digest``): shares
that combine to another root are refused and the unseal progress starts again. Shares held while
unsealing are bytearrays wiped after reconstruction or on seal (best effort: Python strings of the
request and the library's integers are not under our control).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....errors import KeyFileError, OutputError, RuntimeUnavailableError, UsageError
from ...errors import KeyServiceError
from ..barrier import KEY_CHECK_SIZE, ROOT_KEY_SIZE, RootBarrier, key_check, matches_key_check

SHARE_VERSION = "msvault1"
MAX_SHARES = 255  # share indices are small positive integers; 255 as in HashiCorp Vault
MAX_SHARE_TEXT = 256  # a valid share is ~150 characters; anything longer is refused unread
_HALF = ROOT_KEY_SIZE // 2
_CHECKSUM_SIZE = 4
_SHARE_RE = re.compile(
    r"msvault1:(?P<vault>[0-9a-f]{32}):(?P<threshold>[0-9]{1,3}):(?P<index>[0-9]{1,3})"
    r":(?P<value>[0-9a-f]{64}):(?P<check>[0-9a-f]{8})"
)
VAULT_ID_RE = re.compile(r"[0-9a-f]{32}")
# Unseal needs no token, so it is rate-limited: a human pastes a few shares, a script a few more.
UNSEAL_ATTEMPTS = 30
UNSEAL_WINDOW = 60.0


class ShareError(KeyServiceError):
    """A share that cannot be used: malformed, corrupted, or made for another vault."""

    code = "invalid_share"
    status = 400


class UnsealRateLimited(KeyServiceError):
    """Too many unseal attempts in the window; ``retry_after`` seconds until the next one is taken."""

    code = "rate_limited"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many unseal attempts: retry in {retry_after} s")
        self.retry_after = retry_after


def wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


@dataclass(frozen=True)
class ShamirOptions:
    shares: int
    threshold: int
    share_dir: Path

    def check(self) -> None:
        if not 2 <= self.threshold <= self.shares <= MAX_SHARES:
            raise UsageError(
                f"--threshold must be at least 2 and at most --shares, and --shares at most {MAX_SHARES}"
                f" (got {self.threshold} of {self.shares})"
            )


@dataclass(repr=False)
class Share:
    vault_id: str
    threshold: int
    index: int
    value: bytearray = field(repr=False)

    def __repr__(self) -> str:
        return f"Share(vault_id={self.vault_id!r}, index={self.index})"


def _checksum(body: str) -> str:
    return hashlib.sha256(body.encode()).digest()[:_CHECKSUM_SIZE].hex()


def share_digest(vault_id: str, index: int, value: bytes | bytearray) -> str:
    """What vault.json keeps of each share: a share is 32 uniformly random bytes, so its hash gives
    nothing away, and it lets the vault refuse a wrong share on its own (not at the threshold)."""
    h = hashlib.sha256(f"modelseal vault share v1\0{vault_id}\0{index}\0".encode())
    h.update(value)
    return h.hexdigest()


def format_share(vault_id: str, threshold: int, index: int, value: bytes | bytearray) -> str:
    body = f"{SHARE_VERSION}:{vault_id}:{threshold}:{index}:{value.hex()}"
    return f"{body}:{_checksum(body)}"


def parse_share(text: str) -> Share:
    """A share from its text; every refusal names the problem, never the share's value."""
    if len(text) > MAX_SHARE_TEXT:
        raise ShareError("the share is too long to be a modelseal vault share")
    text = text.strip()
    found = _SHARE_RE.fullmatch(text)
    if found is None:
        if text.startswith("msvault") and not text.startswith(SHARE_VERSION + ":"):
            raise ShareError(f"unsupported share version (this vault reads {SHARE_VERSION})")
        raise ShareError("the share is malformed (expected msvault1:<vault id>:<threshold>:<index>:...)")
    body = text[: text.rindex(":")]
    if not hmac.compare_digest(_checksum(body), found["check"]):
        raise ShareError("the share is corrupted (its checksum does not match: check for typos)")
    threshold, index = int(found["threshold"]), int(found["index"])
    if not 2 <= threshold <= MAX_SHARES or not 1 <= index <= MAX_SHARES:
        raise ShareError("the share is malformed (threshold or index out of range)")
    return Share(found["vault"], threshold, index, bytearray.fromhex(found["value"]))


def _shamir() -> Any:
    try:
        from Crypto.Protocol.SecretSharing import Shamir
    except ImportError:
        raise RuntimeUnavailableError("pycryptodome", "vault") from None
    return Shamir


def split_root(root: bytes | bytearray, shares: int, threshold: int) -> list[bytearray]:
    """``shares`` share values (index i+1 at position i), each the two halves' values at that index."""
    shamir = _shamir()
    if len(root) != ROOT_KEY_SIZE:
        raise KeyServiceError(f"a vault root key is {ROOT_KEY_SIZE} bytes")
    view = memoryview(root)
    low = shamir.split(threshold, shares, view[:_HALF])
    high = shamir.split(threshold, shares, view[_HALF:])
    out: list[bytearray] = []
    for (index_low, value_low), (index_high, value_high) in zip(low, high, strict=True):
        if not index_low == index_high == len(out) + 1:
            raise KeyServiceError("Shamir split numbered its shares unexpectedly")
        out.append(bytearray(value_low + value_high))
    return out


def combine_root(shares: list[tuple[int, bytearray]]) -> bytearray:
    """The root the given shares interpolate to; a wrong share gives a wrong root, never an error."""
    shamir = _shamir()
    halves = []
    for part in (slice(0, _HALF), slice(_HALF, ROOT_KEY_SIZE)):
        points = [(index, memoryview(value)[part]) for index, value in shares]
        halves.append(shamir.combine(points))
    return bytearray(halves[0] + halves[1])


class UnsealRateLimit:
    """At most ``attempts`` refused shares per ``window`` seconds from one source (a client address);
    ``max_sources`` bounds the memory (the oldest source is forgotten first)."""

    def __init__(
        self, attempts: int = UNSEAL_ATTEMPTS, window: float = UNSEAL_WINDOW, max_sources: int = 4096
    ) -> None:
        self._attempts = attempts
        self._window = window
        self._max_sources = max_sources
        self._times: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def check(self, source: str = "", now: float | None = None) -> None:
        """Raise UnsealRateLimited if ``source`` used up its refusals."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._times.get(source)
            while times and times[0] <= now - self._window:
                times.popleft()
            if times is not None and len(times) >= self._attempts:
                raise UnsealRateLimited(max(1, math.ceil(times[0] + self._window - now)))

    def refused(self, source: str = "", now: float | None = None) -> None:
        """Count one refused share against ``source``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._times.setdefault(source, collections.deque())
            self._times.move_to_end(source)
            times.append(now)
            while len(self._times) > self._max_sources:
                self._times.popitem(last=False)

    def take(self, source: str = "", now: float | None = None) -> None:
        """Check, then count: one attempt (tests, and callers that count every attempt)."""
        self.check(source, now)
        self.refused(source, now)


class ShamirBarrier(RootBarrier):
    """Starts sealed; unseals when ``threshold`` distinct shares of this vault's root arrived."""

    def __init__(
        self,
        vault_id: str,
        threshold: int,
        check: bytes,
        *,
        digests: dict[int, str] | None = None,
        rate_limit: UnsealRateLimit | None = None,
    ) -> None:
        super().__init__(None)
        self._vault_id = vault_id
        self._threshold = threshold
        self._check = check
        self._digests = digests or {}  # share index -> share_digest (vaults made before: empty)
        self._pending: dict[int, bytearray] = {}
        self._unseal_lock = threading.Lock()
        self._rate_limit = rate_limit or UnsealRateLimit()

    @classmethod
    def from_config(cls, vault_id: str, config: object) -> ShamirBarrier:
        if not isinstance(config, dict):
            raise KeyServiceError("vault.json has no valid `shamir` section")
        threshold, check = config.get("threshold"), config.get("key_check")
        if type(threshold) is not int or not 2 <= threshold <= MAX_SHARES:
            raise KeyServiceError("vault.json: `shamir.threshold` is not a valid threshold")
        if not isinstance(check, str) or not re.fullmatch(f"[0-9a-f]{{{2 * KEY_CHECK_SIZE}}}", check):
            raise KeyServiceError("vault.json: `shamir.key_check` is not a valid key-check value")
        digests = config.get("share_digests", [])
        if not isinstance(digests, list) or not all(
            isinstance(d, str) and re.fullmatch("[0-9a-f]{64}", d) for d in digests
        ):
            raise KeyServiceError("vault.json: `shamir.share_digests` is not a list of share digests")
        return cls(
            vault_id, threshold, bytes.fromhex(check), digests={i: d for i, d in enumerate(digests, start=1)}
        )

    def _progress(self) -> dict[str, object]:
        if not self.sealed:
            return {"sealed": False}
        return {"sealed": True, "progress": len(self._pending), "threshold": self._threshold}

    def unseal_status(self) -> dict[str, object]:
        with self._unseal_lock:
            return self._progress()

    def _wipe_pending(self) -> None:
        for value in self._pending.values():
            wipe(value)
        self._pending.clear()

    def submit_share(self, text: str, source: str = "") -> dict[str, object]:
        """Take one share from ``source`` (a client address). A share that is not one of this
        vault's is refused on its own and counts against its source's limit; it never touches the
        progress other sources made."""
        self._rate_limit.check(source)
        try:
            share = parse_share(text)
        except ShareError:
            self._rate_limit.refused(source)
            raise
        with self._unseal_lock:
            try:
                return self._take(share)
            except KeyServiceError:
                self._rate_limit.refused(source)
                raise
            finally:
                if not any(v is share.value for v in self._pending.values()):
                    wipe(share.value)

    def _take(self, share: Share) -> dict[str, object]:
        if not self.sealed:
            return self._progress()
        if share.vault_id != self._vault_id:
            raise ShareError(
                f"this share belongs to another vault ({share.vault_id[:8]}…, this one is "
                f"{self._vault_id[:8]}…)"
            )
        if share.threshold != self._threshold:
            raise ShareError(
                f"the share says threshold {share.threshold}, this vault was split with {self._threshold}"
            )
        expected = self._digests.get(share.index)
        if self._digests and (
            expected is None
            or not hmac.compare_digest(share_digest(self._vault_id, share.index, share.value), expected)
        ):
            raise ShareError(f"this is not share number {share.index} of this vault; progress unchanged")
        held = self._pending.get(share.index)
        if held is not None:
            if hmac.compare_digest(held, share.value):
                return self._progress()  # the same share twice counts once
            raise ShareError(f"a different share number {share.index} was already given; progress unchanged")
        self._pending[share.index] = share.value
        if len(self._pending) < self._threshold:
            return self._progress()
        try:
            root = combine_root(list(self._pending.items()))
        finally:
            self._wipe_pending()
        try:
            if not matches_key_check(root, self._vault_id, self._check):
                raise KeyServiceError(
                    "the shares do not reconstruct this vault's root key (one is wrong); "
                    "unseal progress was reset: give the shares again",
                    code="shares_mismatch",
                )
            self.unseal(root)
        finally:
            wipe(root)
        return self._progress()

    def seal(self) -> None:
        with self._unseal_lock:
            self._wipe_pending()
            super().seal()


# --- init -----------------------------------------------------------------------------------------


def share_path(share_dir: Path, index: int) -> Path:
    return share_dir / f"share-{index}.txt"


def prepare_share_dir(options: ShamirOptions) -> None:
    """Before anything is created: the share folder exists (0700 if new) and holds none of our names."""
    options.check()
    try:
        options.share_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create share folder {options.share_dir}: {e.strerror}") from None
    taken = [p.name for i in range(1, options.shares + 1) if (p := share_path(options.share_dir, i)).exists()]
    if taken:
        raise OutputError(
            f"{options.share_dir} already holds {', '.join(taken)}: refusing to overwrite shares"
        )


def _write_once(path: Path, text: str) -> None:
    """Write ``text`` to a new 0600 file: a temp file, fsynced, then linked (link never overwrites)."""
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def config_section(
    options: ShamirOptions, vault_id: str, root: bytes | bytearray, values: list[bytearray]
) -> dict[str, Any]:
    """The `shamir` section of vault.json: counts, the key-check value and each share's digest; no
    secret. ``values`` are the shares ``write_shares`` will write (split once: splitting is random)."""
    options.check()
    return {
        "shares": options.shares,
        "threshold": options.threshold,
        "key_check": key_check(root, vault_id).hex(),
        "share_digests": [share_digest(vault_id, i, v) for i, v in enumerate(values, start=1)],
    }


def write_shares(options: ShamirOptions, vault_id: str, values: list[bytearray]) -> list[Path]:
    """Write each share (split_root's ``values``) to its own new 0600 file; all of them or none.
    The values are wiped afterwards."""
    written: list[Path] = []
    try:
        for index, value in enumerate(values, start=1):
            path = share_path(options.share_dir, index)
            _write_once(path, format_share(vault_id, options.threshold, index, value) + "\n")
            written.append(path)
        _fsync_dir(options.share_dir)
    except OSError as e:
        # Half a set of shares is worse than none: nobody should hand them out.
        for path in written:
            path.unlink(missing_ok=True)
        raise OutputError(f"cannot write the shares to {options.share_dir}: {e.strerror}") from None
    finally:
        for value in values:
            wipe(value)
    return written


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_share_file(path: str | os.PathLike[str]) -> str:
    """A share from a file, bounded: the first line, at most MAX_SHARE_TEXT characters."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(MAX_SHARE_TEXT + 2)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not ASCII text"
        raise KeyFileError(f"cannot read share file {path}: {reason}") from None
    line = text.split("\n", 1)[0].strip()
    if not line or len(line) > MAX_SHARE_TEXT:
        raise KeyFileError(f"share file {path} does not hold one share on its first line")
    return line
