"""The PKCS#11 root: the barrier's root is encrypted by an AES-256 key that never leaves a token.

`vault init --root pkcs11 --module SO --token LABEL --pin-file F [--key-label L]` generates an
AES-256 key *in* the token (CKA_SENSITIVE true, CKA_EXTRACTABLE false, CKA_TOKEN true), draws a
random 32-byte root on the host and has the token encrypt it (CKM_AES_GCM, AAD bound to the vault
id). vault.json keeps the ciphertext, the module path, the token and key labels and the PIN file's
path, never the PIN. `vault serve` asks the token to decrypt the root at start: a copied data folder
is useless without the token and its PIN. Tested with SoftHSM2.

The PIN is read from a file only (bounded, refused when others may read it), never argv or env;
the library loading, sessions and PIN files are modelseal.pkcs11util's, shared with the device.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .... import pkcs11util
from ....pkcs11util import LABEL_RE, read_pin
from ...errors import KeyServiceError
from ..barrier import ROOT_KEY_SIZE

if TYPE_CHECKING:
    from pkcs11 import Session

_NONCE_SIZE = 12
_TAG_BITS = 128
_SEALED_SIZE = ROOT_KEY_SIZE + _TAG_BITS // 8


@dataclass(frozen=True)
class Pkcs11Options:
    module: str
    token: str
    pin_file: Path
    key_label: str | None = None

    def check(self) -> None:
        pkcs11util.check_label("--token", self.token)
        pkcs11util.check_label("--key-label", self.key_label)


def _aad(vault_id: str) -> bytes:
    return f"modelseal vault pkcs11 root v1:{vault_id}".encode()


def _require() -> None:
    pkcs11util.require("vault")


@contextmanager
def _session(module: str, token_label: str, pin: str, *, rw: bool) -> Iterator[Session]:
    """A logged-in session on the token (modelseal.pkcs11util), its failures as vault errors."""
    try:
        with pkcs11util.open_session(module, token_label, pin, rw=rw) as session:
            yield session
    except pkcs11util.TokenError as e:
        raise KeyServiceError(e.message, code=e.code) from None


def create(options: Pkcs11Options, vault_id: str, root: bytes | bytearray) -> dict[str, Any]:
    """Make the token key, encrypt ``root`` with it; returns the `pkcs11` section of vault.json."""
    _require()
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
    from pkcs11 import exceptions as p11
    from pkcs11.mechanisms import GCMParams
    from pkcs11.types import EncryptMixin

    options.check()
    module = str(Path(options.module).absolute())
    pin_file = Path(options.pin_file).absolute()
    label = options.key_label or f"modelseal-vault-{vault_id[:12]}"
    key_id = bytes.fromhex(vault_id)
    pin = read_pin(pin_file)
    nonce = os.urandom(_NONCE_SIZE)
    with _session(module, options.token, pin, rw=True) as session:
        if any(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})):
            raise KeyServiceError(
                f"token {options.token!r} already holds a key labelled {label!r}: choose another --key-label"
            )
        try:
            key = session.generate_key(
                KeyType.AES,
                256,
                id=key_id,
                label=label,
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                },
            )
        except p11.PKCS11Error as e:
            raise KeyServiceError(
                f"the PKCS#11 token {options.token!r} could not generate an AES-256 key ({type(e).__name__})"
            ) from None
        try:
            # A token that silently ignored the template would leave an exportable root of trust.
            if key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
                raise KeyServiceError(f"token {options.token!r} made the key extractable: refusing to use it")
            if not isinstance(key, EncryptMixin):
                raise KeyServiceError(f"token {options.token!r} made a key that cannot encrypt")
            sealed = key.encrypt(
                bytes(root),
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, _aad(vault_id), _TAG_BITS),
            )
        except p11.PKCS11Error as e:
            key.destroy()
            raise KeyServiceError(
                f"the PKCS#11 token {options.token!r} could not encrypt with AES-GCM ({type(e).__name__})"
            ) from None
        except BaseException:
            key.destroy()
            raise
    if not isinstance(sealed, bytes) or len(sealed) != _SEALED_SIZE:
        raise KeyServiceError("the PKCS#11 token returned a ciphertext of an unexpected size")
    return {
        "module": module,
        "token": options.token,
        "key_label": label,
        "key_id": vault_id,
        "pin_file": str(pin_file),
        "nonce": nonce.hex(),
        "sealed_root": sealed.hex(),
    }


def _text(config: dict[str, Any], name: str, pattern: str) -> str:
    value = config.get(name)
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise KeyServiceError(f"vault.json: `pkcs11.{name}` is missing or malformed")
    return value


def open_root(config: object, vault_id: str) -> bytearray:
    """The root, decrypted by the token (the caller wipes it once the barrier derived its keys)."""
    _require()
    from pkcs11 import KeyType, Mechanism, ObjectClass
    from pkcs11 import exceptions as p11
    from pkcs11.mechanisms import GCMParams
    from pkcs11.types import DecryptMixin

    if not isinstance(config, dict):
        raise KeyServiceError("vault.json has no valid `pkcs11` section")
    module = _text(config, "module", r"/.{1,4095}")
    token = _text(config, "token", LABEL_RE.pattern)
    label = _text(config, "key_label", LABEL_RE.pattern)
    key_id = bytes.fromhex(_text(config, "key_id", r"[0-9a-f]{32}"))
    pin_file = _text(config, "pin_file", r"/.{1,4095}")
    nonce = bytes.fromhex(_text(config, "nonce", f"[0-9a-f]{{{2 * _NONCE_SIZE}}}"))
    sealed = bytes.fromhex(_text(config, "sealed_root", f"[0-9a-f]{{{2 * _SEALED_SIZE}}}"))
    pin = read_pin(pin_file)
    with _session(module, token, pin, rw=False) as session:
        try:
            key = session.get_key(
                object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label, id=key_id
            )
        except p11.NoSuchKey:
            raise KeyServiceError(
                f"PKCS#11 token {token!r} holds no key labelled {label!r} for this vault "
                "(wrong token, or the key was deleted)"
            ) from None
        except p11.MultipleObjectsReturned:
            raise KeyServiceError(f"PKCS#11 token {token!r} holds several keys labelled {label!r}") from None
        if not isinstance(key, DecryptMixin):
            raise KeyServiceError(f"PKCS#11 key {label!r} in token {token!r} may not decrypt")
        try:
            root = key.decrypt(
                sealed,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, _aad(vault_id), _TAG_BITS),
            )
        except p11.PKCS11Error:
            raise KeyServiceError(
                f"PKCS#11 token {token!r} could not decrypt this vault's root key "
                "(another vault's key, or vault.json was altered)"
            ) from None
    if not isinstance(root, bytes) or len(root) != ROOT_KEY_SIZE:
        raise KeyServiceError("the PKCS#11 token returned a root key of an unexpected size")
    return bytearray(root)
