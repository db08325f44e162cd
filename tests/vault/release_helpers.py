"""Shared pieces of the key-release tests: a device set-up and hand-built release requests."""

from __future__ import annotations

import base64
import os
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import modelseal
from modelseal.keyrelease import wire
from modelseal.vault.client import DeviceIdentity, VaultRecipient
from modelseal.vault.server import datadir
from modelseal.vault.server.callers import Principal
from modelseal.vault.server.devices import DeviceStore
from modelseal.vault.server.store import Store

from .conftest import VaultServer


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Sealed:
    """A model sealed under a fresh vault data key, and what a test needs to check its release."""

    path: Path
    data: bytes
    key_name: str
    recipient: VaultRecipient


@dataclass
class LocalVault:
    """A vault data folder opened in-process (no server): master key "k" and a model sealed under it.

    The caller closes ``store``.
    """

    store: Store
    admin: Principal
    devices: DeviceStore
    sealed: Sealed

    @property
    def data_key(self) -> bytes:
        return self.sealed.recipient.data_key


def local_vault(folder: Path) -> LocalVault:
    datadir.init(folder / "v")
    store = datadir.DataDir(folder / "v").open_store()
    admin = store.authenticate((folder / "v" / datadir.TOKEN_FILE).read_text().strip())
    store.create_key(admin, "k")
    key = store.datakey(admin, "k", plaintext=True)
    recipient = VaultRecipient("k", key.key_version, key.wrapped, key.plaintext)
    (folder / "m.bin").write_bytes(b"weights")
    modelseal.seal(folder / "m.bin", folder / "m.mseal", [recipient], mek=recipient.data_key)
    return LocalVault(
        store, admin, DeviceStore(store), Sealed(folder / "m.mseal", b"weights", "k", recipient)
    )


def seal_model(vault: VaultServer, key_name: str, folder: Path, size: int = 20_000) -> Sealed:
    src = folder / f"{unique('m')}.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    out = src.with_suffix(".mseal")
    with vault.client() as admin:
        if key_name not in admin.list_keys():
            admin.create_key(key_name)
        recipient = VaultRecipient.prepare(admin, key_name)
    modelseal.seal(src, out, [recipient], mek=recipient.data_key)
    return Sealed(out, data, key_name, recipient)


def device(vault: VaultServer, groups: list[str] | None = None) -> tuple[str, bytes]:
    name = unique("dev")
    with vault.client() as admin:
        _, psk = admin.create_device(name, groups)
    return name, psk


def identity(vault: VaultServer, name: str, psk: bytes) -> DeviceIdentity:
    return DeviceIdentity(vault.url, name, psk, ca=vault.ca)


def opens(vault: VaultServer, sealed: Sealed, name: str, psk: bytes) -> bool:
    with modelseal.open(sealed.path, identity(vault, name, psk)) as model:
        return bytes(model.read()) == sealed.data


@dataclass
class Request:
    body: dict[str, Any]
    ephemeral: X25519PrivateKey
    nonce: bytes


def build_request(
    name: str,
    psk: bytes,
    sealed: Sealed,
    *,
    timestamp: int | None = None,
    nonce: bytes | None = None,
) -> Request:
    """A release request made by hand, exactly as DeviceIdentity makes it (to capture and resend)."""
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    nonce = nonce or os.urandom(16)
    timestamp = int(time.time()) if timestamp is None else timestamp
    r = sealed.recipient
    mac = wire.mac(
        psk,
        wire.mac_input(
            domain="default",
            device=name,
            key_name=r.key_name,
            key_version=r.key_version,
            wrapped=r.wrapped,
            timestamp=timestamp,
            nonce=nonce,
            ephemeral_public=public,
        ),
    )
    b64 = base64.b64encode
    body = {
        "device": name,
        "key_name": r.key_name,
        "key_version": r.key_version,
        "wrapped": b64(r.wrapped).decode(),
        "timestamp": timestamp,
        "nonce": b64(nonce).decode(),
        "ephemeral_public": b64(public).decode(),
        "mac": b64(mac).decode(),
    }
    return Request(body, ephemeral, nonce)


def post(vault: VaultServer, body: dict[str, Any]) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(vault.ca))
    return httpx.post(f"{vault.url}/v1/release", json=body, verify=context, timeout=10)


def open_answer(request: Request, name: str, sealed: Sealed, answer: dict[str, Any]) -> bytes:
    info = wire.hpke_info(
        domain="default",
        device=name,
        key_name=sealed.recipient.key_name,
        key_version=sealed.recipient.key_version,
        nonce=request.nonce,
    )
    return wire.SUITE.decrypt(base64.b64decode(answer["sealed"]), request.ephemeral, info=info)


def encodings(secret: bytes) -> set[bytes]:
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for b64 in (base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
        forms |= {b64, b64.rstrip(b"=")}
    return forms
