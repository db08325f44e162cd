"""A device opens vault-sealed models through key release, proving its PSK without sending it.

``DeviceIdentity`` implements the Identity protocol: for each `vault` stanza it makes a fresh
ephemeral X25519 key, sends a release request MAC'd with the PSK, and opens the HPKE-sealed answer
with the ephemeral private key, which never leaves this process. A proxy between device and vault
(the future edge agent) sees only the sealed answer.

The PSK is read once, kept in memory, and appears in no repr, log line or error message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ...errors import KeyFileError, UsageError
from ...format.header import Stanza
from ...keyrelease import wire
from ...keyrelease.wire import DEFAULT_DOMAIN
from ..errors import KeyServiceError, NotFound, PermissionDenied, Unavailable
from .api import VaultClient
from .recipient import STANZA_TYPE, parse_args


class Credential:
    """A device's PSK file: the PSK and, when the file says so, the device's name and domain."""

    __slots__ = ("device", "domain", "psk")

    def __init__(self, psk: bytes, device: str | None, domain: str | None) -> None:
        self.psk, self.device, self.domain = psk, device, domain

    def __repr__(self) -> str:
        return f"Credential(device={self.device!r}, domain={self.domain!r})"


def load_credential(path: str | os.PathLike[str]) -> Credential:
    """A PSK file: 32 raw bytes, or 64 hex digits after optional `# device: NAME` / `# domain: D` lines.

    `modelseal vault device create --psk-out F` writes the second form, so a container needs only
    the file to know who it is.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(1024)
    except OSError as e:
        raise KeyFileError(f"cannot read PSK file {path}: {e.strerror}") from None
    if len(data) == wire.PSK_SIZE:
        return Credential(data, None, None)
    fields: dict[str, str] = {}
    digits: list[str] = []
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        lines = ["<binary>"]
    for line in lines:
        line = line.strip()
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and key.strip() in ("device", "domain") and value.strip():
                fields[key.strip()] = value.strip()
        elif line:
            digits.append(line)
    if len(digits) == 1 and len(digits[0]) == 2 * wire.PSK_SIZE:
        try:
            return Credential(bytes.fromhex(digits[0]), fields.get("device"), fields.get("domain"))
        except ValueError:
            pass
    raise KeyFileError(f"PSK file {path} must hold 32 raw bytes or 64 hex digits")


def load_psk(path: str | os.PathLike[str]) -> bytes:
    """The PSK alone from a PSK file (see load_credential)."""
    return load_credential(path).psk


# Answers that mean the vault did not act on the request, so sending it again (a new nonce) cannot
# release twice: nothing listened (unreachable), the agent never reached it (vault_unreachable),
# it refused before any work (sealed, too_many_requests, commit_queue_full, shutting_down), or its
# transaction rolled back (release_failed).
RESEND_SAFE = frozenset(
    {"unreachable", "vault_unreachable", "sealed", "too_many_requests", "commit_queue_full",
     "shutting_down", "release_failed"}
)  # fmt: skip
RETRY_FOR = 5.0


class DeviceIdentity:
    """Opens models through the vault's key release as device ``device_id`` holding ``psk``."""

    __slots__ = ("_lock", "_psk", "_released", "client", "device_id", "domain", "retry_for")

    def __init__(
        self,
        vault_url_or_client: str | VaultClient,
        device_id: str,
        psk: bytes,
        *,
        ca: str | os.PathLike[str] | None = None,
        domain: str = DEFAULT_DOMAIN,
        retry_for: float = RETRY_FOR,
    ) -> None:
        if len(psk) != wire.PSK_SIZE:
            raise KeyFileError(f"a device PSK is {wire.PSK_SIZE} bytes")
        self.client = (
            vault_url_or_client
            if isinstance(vault_url_or_client, VaultClient)
            else VaultClient(vault_url_or_client, None, ca=ca)
        )
        self.device_id = device_id
        self.domain = domain
        self._psk = bytes(psk)
        self._released: dict[tuple[str, int], None] = {}  # ordered set of what the vault released
        self._lock = threading.Lock()
        self.retry_for = retry_for  # seconds a release keeps trying while the vault is not there

    @classmethod
    def from_psk_file(
        cls,
        address: str | VaultClient,
        psk_file: str | os.PathLike[str],
        *,
        device: str | None = None,
        ca: str | os.PathLike[str] | None = None,
        domain: str | None = None,
    ) -> DeviceIdentity:
        """A device from its PSK file; ``address`` is the vault's URL or an agent's `unix:PATH`."""
        cred = load_credential(psk_file)
        name = device or cred.device
        if not name:
            raise UsageError(f"PSK file {psk_file} does not name its device: give --device NAME")
        return cls(address, name, cred.psk, ca=ca, domain=domain or cred.domain or DEFAULT_DOMAIN)

    def __repr__(self) -> str:
        return f"DeviceIdentity(url={self.client.url!r}, device_id={self.device_id!r})"

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DeviceIdentity:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def release(self, key_name: str, key_version: int, wrapped: bytes) -> bytes:
        """The file key in one `vault` stanza body, released to this device (or PermissionDenied).

        While the vault restarts (nothing listens, the agent cannot reach it, it is sealed or over
        capacity) the request is sent again with a fresh nonce, with backoff, for up to
        ``retry_for`` seconds: only on answers that say it was not acted on, so a key is never
        released (nor a licence use counted) twice for one open."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                return self._release_once(key_name, key_version, wrapped)
            except Unavailable as e:
                left = deadline - time.monotonic()
                if e.code not in RESEND_SAFE or left <= 0:
                    raise
                time.sleep(min(left, random.uniform(delay / 2, delay)))  # noqa: S311 - jitter
                delay = min(delay * 2, 1.0)

    def _release_once(self, key_name: str, key_version: int, wrapped: bytes) -> bytes:
        ephemeral = X25519PrivateKey.generate()
        public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        nonce = os.urandom(wire.NONCE_MIN)
        timestamp = int(time.time())
        proof = wire.mac(
            self._psk,
            wire.mac_input(
                domain=self.domain,
                device=self.device_id,
                key_name=key_name,
                key_version=key_version,
                wrapped=wrapped,
                timestamp=timestamp,
                nonce=nonce,
                ephemeral_public=public,
            ),
        )
        answer = self.client.release(
            {
                "domain": self.domain,
                "device": self.device_id,
                "key_name": key_name,
                "key_version": key_version,
                "wrapped": base64.b64encode(wrapped).decode(),
                "timestamp": timestamp,
                "nonce": base64.b64encode(nonce).decode(),
                "ephemeral_public": base64.b64encode(public).decode(),
                "mac": base64.b64encode(proof).decode(),
            }
        )
        info = wire.hpke_info(
            domain=self.domain, device=self.device_id, key_name=key_name, key_version=key_version, nonce=nonce
        )
        try:
            sealed = base64.b64decode(str(answer["sealed"]), validate=True)
            key = wire.SUITE.decrypt(sealed, ephemeral, info=info)
        except Exception:
            # Not made for our ephemeral key and this request: a proxy tampered or answered itself.
            raise KeyServiceError("vault: the released key does not open for this request") from None
        with self._lock:
            self._released[(key_name, key_version)] = None
        return key

    @property
    def released(self) -> tuple[tuple[str, int], ...]:
        """The (key name, version) pairs the vault released to this identity so far."""
        with self._lock:
            return tuple(self._released)

    def _headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        return wire.device_headers(
            self._psk, domain=self.domain, device=self.device_id, method=method, path=path, body=body
        )

    def check_lease(self, key_name: str, key_version: int) -> dict[str, Any]:
        """Ask the vault whether this device may still use the key (PermissionDenied if not)."""
        body = json.dumps(
            {
                "domain": self.domain,
                "device": self.device_id,
                "key_name": key_name,
                "key_version": key_version,
            }
        ).encode()
        return self.client.lease(body, self._headers("POST", "/v1/lease", body))

    def lease_check(self) -> Callable[[], str | None]:
        """For modelseal.lease: None while every released key is still granted, else why not."""

        def check() -> str | None:
            for name, version in self.released:
                try:
                    self.check_lease(name, version)
                except (PermissionDenied, NotFound):
                    return f"the vault no longer grants key {name!r} v{version} to device {self.device_id!r}"
            return None

        return check

    def fetch_model(self, model_id: str, out: str | os.PathLike[str]) -> dict[str, Any]:
        """Download a sealed model from the vault's repository (ciphertext) to ``out``, atomically.

        When ``out`` already holds a copy, its digest goes in If-None-Match and the vault answers
        304 (after checking this device may have it), so nothing is downloaded again.
        """
        path = f"/v1/models/{quote(model_id, safe='')}/content"
        headers = self._headers("GET", path)
        if os.path.isfile(out):
            headers["If-None-Match"] = f'"{_sha256_file(out)}"'
        return self.client.download_model(model_id, out, headers=headers)

    def unwrap(self, stanzas: Sequence[Stanza]) -> Iterator[bytes]:
        refused: KeyServiceError | None = None
        yielded = False
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            name, version = parse_args(stanza)
            try:
                key = self.release(name, version, stanza.body)
            except (PermissionDenied, NotFound) as e:
                # Another `vault` stanza (another key) may still be released to this device.
                refused = e
                continue
            yielded = True
            yield key
        if refused is not None and not yielded:
            raise refused


def _sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
