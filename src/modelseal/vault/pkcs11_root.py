"""The PKCS#11 root: the barrier's root is encrypted by an AES-256 key that never leaves a token.

`vault init --root pkcs11 --module SO --token LABEL --pin-file F [--key-label L]` generates an
AES-256 key *in* the token (CKA_SENSITIVE true, CKA_EXTRACTABLE false, CKA_TOKEN true), draws a
random 32-byte root on the host and has the token encrypt it (CKM_AES_GCM, AAD bound to the vault
id). vault.json keeps the ciphertext, the module path, the token and key labels and the PIN file's
path, never the PIN. `vault serve` asks the token to decrypt the root at start: a copied data folder
is useless without the token and its PIN. Tested with SoftHSM2.

The PIN is read from a file only (bounded, refused when others may read it), never argv or env.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KeyFileError, RuntimeUnavailableError, UsageError
from .barrier import ROOT_KEY_SIZE
from .errors import KeyServiceError

if TYPE_CHECKING:
    from pkcs11 import Session

MAX_PIN_FILE = 256
_NONCE_SIZE = 12
_TAG_BITS = 128
_SEALED_SIZE = ROOT_KEY_SIZE + _TAG_BITS // 8
_LABEL_RE = re.compile(r"[\x20-\x7e]{1,64}")  # printable ASCII: it ends up in vault.json and messages


@dataclass(frozen=True)
class Pkcs11Options:
    module: str
    token: str
    pin_file: Path
    key_label: str | None = None

    def check(self) -> None:
        for name, value in (("--token", self.token), ("--key-label", self.key_label)):
            if value is not None and not _LABEL_RE.fullmatch(value):
                raise UsageError(f"{name} must be 1-64 printable ASCII characters")


def _aad(vault_id: str) -> bytes:
    return f"modelseal vault pkcs11 root v1:{vault_id}".encode()


def read_pin(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    try:
        mode = p.stat().st_mode
        with open(p, "rb") as f:
            data = f.read(MAX_PIN_FILE + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read PIN file {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"PIN file {path} is readable by others: chmod 600 it")
    if len(data) > MAX_PIN_FILE:
        raise KeyFileError(f"PIN file {path} is larger than {MAX_PIN_FILE} bytes")
    try:
        pin = data.decode("utf-8").split("\n", 1)[0].rstrip("\r")
    except UnicodeDecodeError:
        raise KeyFileError(f"PIN file {path} is not UTF-8 text") from None
    if not pin:
        raise KeyFileError(f"PIN file {path} is empty")
    return pin


def _require() -> None:
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        raise RuntimeUnavailableError("python-pkcs11", "vault") from None


_LIBRARIES: dict[str, Any] = {}
_LIBRARIES_LOCK = threading.Lock()


def load_module(module: str) -> Any:
    """The loaded PKCS#11 library for ``module``, one per process and never unloaded.

    Sessions and keys of python-pkcs11 call through the library's function list: unloading it
    while such an object may still be alive crashes the process, and a second C_Initialize of the
    same module fails. So every user in the process (the tests too) shares this one instance.
    """
    _require()
    import pkcs11
    from pkcs11 import exceptions as p11

    if not Path(module).is_file():
        raise KeyServiceError(
            f"PKCS#11 module {module} does not exist (is SoftHSM2 or the HSM client installed?)"
        )
    with _LIBRARIES_LOCK:
        lib = _LIBRARIES.get(module)
        if lib is None:
            try:
                lib = pkcs11.lib(module)
            except p11.PKCS11Error:
                raise KeyServiceError(
                    f"cannot load PKCS#11 module {module}: not a usable PKCS#11 library"
                ) from None
            _LIBRARIES[module] = lib
        return lib


@contextmanager
def _session(module: str, token_label: str, pin: str, *, rw: bool) -> Iterator[Session]:
    """A logged-in session on the token labelled ``token_label``, closed (logged out) afterwards."""
    from pkcs11 import exceptions as p11

    lib = load_module(module)
    try:
        token = lib.get_token(token_label=token_label)
    except p11.NoSuchToken:
        raise KeyServiceError(f"no PKCS#11 token labelled {token_label!r} in {module}") from None
    except p11.MultipleTokensReturned:
        raise KeyServiceError(f"several PKCS#11 tokens are labelled {token_label!r} in {module}") from None
    try:
        session = token.open(rw=rw, user_pin=pin)
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
        raise KeyServiceError(
            f"the PKCS#11 token {token_label!r} refused the PIN (wrong PIN)", code="pin_incorrect"
        ) from None
    except p11.PinLocked:
        raise KeyServiceError(
            f"the PIN of PKCS#11 token {token_label!r} is locked (too many wrong PINs)", code="pin_locked"
        ) from None
    except p11.PKCS11Error as e:
        raise KeyServiceError(
            f"the PKCS#11 token {token_label!r} refused a session ({type(e).__name__})"
        ) from None
    with session:
        yield session


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
    token = _text(config, "token", _LABEL_RE.pattern)
    label = _text(config, "key_label", _LABEL_RE.pattern)
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
