"""modelseal: seal, sign and open AI models.

The recipes below are the public API; everything else is private and may change.

    >>> import modelseal
    >>> mek = modelseal.keygen()
    >>> modelseal.seal("model.onnx", "model.mseal", mek=mek)            # doctest: +SKIP
    >>> with modelseal.open("model.mseal", modelseal.MEK(mek)) as m:    # doctest: +SKIP
    ...     weights = m.read()                                          # memoryview, memory only
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    FormatError,
    HeaderRoomError,
    IntegrityError,
    KeyFileError,
    LeaseLostError,
    ListenError,
    MemoryLimitError,
    MemoryLockError,
    ModelSealError,
    NoMatchingIdentityError,
    OutputError,
    RuntimeUnavailableError,
    SignatureError,
    UnsupportedVersionError,
    UsageError,
)
from .format.header import DEFAULT_CHUNK_SIZE, DEFAULT_HEADER_ROOM
from .inspection import Inspection, inspect
from .keyfiles import (
    ed25519_public_string,
    load_identity,
    load_mek,
    load_signer,
    load_signer_public,
    write_mek,
    write_signer,
    write_x25519_identity,
    x25519_recipient_string,
)
from .keyfiles import (
    parse_recipient as load_recipient,
)
from .lease import LeasedHandle, LeaseKeeper, LeasePolicy, keep_lease
from .opening import SealedModel, VerifyReport, open, verify
from .recipients import MEK, Identity, Passphrase, Recipient, X25519Identity, X25519Recipient
from .rewrapping import RewrapResult, rewrap
from .sealing import SealResult, keygen, seal
from .signing import generate_signer
from .unsealing import unseal
from .wrapped_mek import WrappedMEK, device_slots, load_wrapped_meks, replace_mek, wrap_mek

try:
    __version__ = version("modelseal")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"


def generate_identity() -> X25519Identity:
    """A fresh X25519 identity; ``.recipient`` is what you give to whoever seals for it."""
    return X25519Identity.generate()


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_HEADER_ROOM",
    "MEK",
    "FormatError",
    "HeaderRoomError",
    "Identity",
    "Inspection",
    "IntegrityError",
    "KeyFileError",
    "LeaseKeeper",
    "LeaseLostError",
    "LeasePolicy",
    "LeasedHandle",
    "ListenError",
    "MemoryLimitError",
    "MemoryLockError",
    "ModelSealError",
    "NoMatchingIdentityError",
    "OutputError",
    "Passphrase",
    "Recipient",
    "RewrapResult",
    "RuntimeUnavailableError",
    "SealResult",
    "SealedModel",
    "SignatureError",
    "UnsupportedVersionError",
    "UsageError",
    "VerifyReport",
    "WrappedMEK",
    "X25519Identity",
    "X25519Recipient",
    "__version__",
    "device_slots",
    "ed25519_public_string",
    "generate_identity",
    "generate_signer",
    "inspect",
    "keep_lease",
    "keygen",
    "load_identity",
    "load_mek",
    "load_recipient",
    "load_signer",
    "load_signer_public",
    "load_wrapped_meks",
    "open",
    "replace_mek",
    "rewrap",
    "seal",
    "unseal",
    "verify",
    "wrap_mek",
    "write_mek",
    "write_signer",
    "write_x25519_identity",
    "x25519_recipient_string",
]
