"""A device opens vault-sealed models through key release, proving its PSK without sending it.

``DeviceIdentity`` implements the Identity protocol: for each `vault` stanza it makes a fresh
ephemeral X25519 key, sends a release request MAC'd with the PSK, and opens the HPKE-sealed answer
with the ephemeral private key, which never leaves this process. A proxy between device and vault
(the future edge agent) sees only the sealed answer.

The PSK is read once, kept in memory, and appears in no repr, log line or error message.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import KeyFileError
from ..format.header import Stanza
from . import protocol
from .client import VaultClient
from .errors import KeyServiceError, NotFound, PermissionDenied
from .recipient import STANZA_TYPE, parse_args
from .store import DEFAULT_DOMAIN


def load_psk(path: str | os.PathLike[str]) -> bytes:
    """A PSK file: 32 raw bytes, or 64 hex digits (optionally followed by a newline)."""
    try:
        with open(path, "rb") as f:
            data = f.read(256)
    except OSError as e:
        raise KeyFileError(f"cannot read PSK file {path}: {e.strerror}") from None
    if len(data) == protocol.PSK_SIZE:
        return data
    text = data.strip()
    if len(text) == 2 * protocol.PSK_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeyFileError(f"PSK file {path} must hold 32 raw bytes or 64 hex digits")


class DeviceIdentity:
    """Opens models through the vault's key release as device ``device_id`` holding ``psk``."""

    __slots__ = ("_psk", "client", "device_id", "domain")

    def __init__(
        self,
        vault_url_or_client: str | VaultClient,
        device_id: str,
        psk: bytes,
        *,
        ca: str | os.PathLike[str] | None = None,
        domain: str = DEFAULT_DOMAIN,
    ) -> None:
        if len(psk) != protocol.PSK_SIZE:
            raise KeyFileError(f"a device PSK is {protocol.PSK_SIZE} bytes")
        self.client = (
            vault_url_or_client
            if isinstance(vault_url_or_client, VaultClient)
            else VaultClient(vault_url_or_client, None, ca=ca)
        )
        self.device_id = device_id
        self.domain = domain
        self._psk = bytes(psk)

    def __repr__(self) -> str:
        return f"DeviceIdentity(url={self.client.url!r}, device_id={self.device_id!r})"

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DeviceIdentity:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def release(self, key_name: str, key_version: int, wrapped: bytes) -> bytes:
        """The file key in one `vault` stanza body, released to this device (or PermissionDenied)."""
        ephemeral = X25519PrivateKey.generate()
        public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        nonce = os.urandom(protocol.NONCE_MIN)
        timestamp = int(time.time())
        proof = protocol.mac(
            self._psk,
            protocol.mac_input(
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
        info = protocol.hpke_info(
            domain=self.domain, device=self.device_id, key_name=key_name, key_version=key_version, nonce=nonce
        )
        try:
            sealed = base64.b64decode(str(answer["sealed"]), validate=True)
            return protocol.SUITE.decrypt(sealed, ephemeral, info=info)
        except Exception:
            # Not made for our ephemeral key and this request: a proxy tampered or answered itself.
            raise KeyServiceError("vault: the released key does not open for this request") from None

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
