"""PKCS#11 plumbing shared by the vault's token root and the device's token identity key.

One loaded library per module path and process, never unloaded; logged-in sessions on a token
found by its label; PINs read from a file only (bounded, refused when others may read it), never
argv or env. Failures are one-line :class:`TokenError`\\ s that never contain the PIN; a caller
with its own error family (the vault) translates them.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import KeyFileError, RuntimeUnavailableError, UsageError

if TYPE_CHECKING:
    from pkcs11 import Session

MAX_PIN_FILE = 256
LABEL_RE = re.compile(r"[\x20-\x7e]{1,64}")  # printable ASCII: labels end up in configs and messages


class TokenError(KeyFileError):
    """A PKCS#11 module, token or key is missing, refused the PIN, or cannot do what was asked.

    ``code`` names the case for callers that answer with machine-readable codes (the vault).
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def check_label(flag: str, value: str | None) -> None:
    if value is not None and not LABEL_RE.fullmatch(value):
        raise UsageError(f"{flag} must be 1-64 printable ASCII characters")


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


def require(extra: str) -> None:
    """python-pkcs11 is importable, else the one-line error naming the pip extra (exit 9)."""
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        raise RuntimeUnavailableError("python-pkcs11", extra) from None


_LIBRARIES: dict[str, Any] = {}
_LIBRARIES_LOCK = threading.Lock()


def load_module(module: str) -> Any:
    """The loaded PKCS#11 library for ``module``, one per process and never unloaded.

    Sessions and keys of python-pkcs11 call through the library's function list: unloading it
    while such an object may still be alive crashes the process, and a second C_Initialize of the
    same module fails. So every user in the process (the tests too) shares this one instance.
    """
    import pkcs11
    from pkcs11 import exceptions as p11

    if not Path(module).is_file():
        raise TokenError(f"PKCS#11 module {module} does not exist (is SoftHSM2 or the HSM client installed?)")
    with _LIBRARIES_LOCK:
        lib = _LIBRARIES.get(module)
        if lib is None:
            try:
                lib = pkcs11.lib(module)
            except p11.PKCS11Error:
                raise TokenError(
                    f"cannot load PKCS#11 module {module}: not a usable PKCS#11 library"
                ) from None
            _LIBRARIES[module] = lib
        return lib


@contextmanager
def open_session(module: str, token_label: str, pin: str, *, rw: bool) -> Iterator[Session]:
    """A logged-in session on the token labelled ``token_label``, closed (logged out) afterwards."""
    from pkcs11 import exceptions as p11

    lib = load_module(module)
    try:
        token = lib.get_token(token_label=token_label)
    except p11.NoSuchToken:
        raise TokenError(f"no PKCS#11 token labelled {token_label!r} in {module}") from None
    except p11.MultipleTokensReturned:
        raise TokenError(f"several PKCS#11 tokens are labelled {token_label!r} in {module}") from None
    try:
        session = token.open(rw=rw, user_pin=pin)
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
        raise TokenError(
            f"the PKCS#11 token {token_label!r} refused the PIN (wrong PIN)", code="pin_incorrect"
        ) from None
    except p11.PinLocked:
        raise TokenError(
            f"the PIN of PKCS#11 token {token_label!r} is locked (too many wrong PINs)", code="pin_locked"
        ) from None
    except p11.PKCS11Error as e:
        raise TokenError(
            f"the PKCS#11 token {token_label!r} refused a session ({type(e).__name__})"
        ) from None
    with session:
        yield session
