"""The one error root of modelseal and its small tree.

Every failure the library can diagnose is a :class:`ModelSealError`; the CLI catches only this root,
prints its one-line message and exits with the class's ``exit_code``. Messages never contain key
material, passphrases or plaintext.
"""

from __future__ import annotations


class ModelSealError(Exception):
    """Root of every error modelseal raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def diagnostic(self) -> str:
        return self.message


class UsageError(ModelSealError):
    """The caller asked for something contradictory or incomplete."""

    exit_code = 2


class FormatError(ModelSealError):
    """The input is not a well-formed sealed model (foreign, malformed or truncated header)."""

    exit_code = 3


class UnsupportedVersionError(FormatError):
    """The sealed model was written by a format version this library does not read."""


class IntegrityError(ModelSealError):
    """Authentication failed: the header or payload was altered, truncated, extended or spliced.

    Deliberately opaque: an attacker learns nothing about which byte failed.
    """

    exit_code = 4
    OPAQUE = "integrity check failed: the sealed model is corrupted or has been tampered with"

    def __init__(self, message: str = OPAQUE) -> None:
        super().__init__(message)


class SignatureError(IntegrityError):
    """The owner signature is missing, made by another key, or does not match the file."""


class NoMatchingIdentityError(ModelSealError):
    """None of the given identities (keys, passphrases) can open this sealed model."""

    exit_code = 5


class KeyFileError(ModelSealError):
    """A key, identity, recipient or passphrase file could not be read or has the wrong form."""

    exit_code = 6


class OutputError(ModelSealError):
    """An output cannot be written safely (it exists, escapes its folder, or the disk refused)."""

    exit_code = 7


class HeaderRoomError(ModelSealError):
    """An in-place header rewrite does not fit in the room the header reserved."""

    exit_code = 8


class RuntimeUnavailableError(ModelSealError):
    """An optional part is not installed; the message names the extra that provides it."""

    exit_code = 9

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed: pip install 'modelseal[{extra}]'")


class MemoryLockError(ModelSealError):
    """Locking plaintext in RAM (mlock) was required but the kernel refused it."""

    exit_code = 10


class MemoryLimitError(ModelSealError):
    """The model needs more memory than this process may use (cgroup limit, RLIMIT_AS): refused
    before anything is decrypted, instead of an OOM kill half-way."""

    exit_code = 10


class DeviceError(ModelSealError):
    """A card could not be reached, or refused a request (its one-line reason is in the message)."""

    exit_code = 11


class AttestationError(DeviceError):
    """An attestation report is forged, from another device or request, stale, or measures other code."""


class LeaseLostError(ModelSealError):
    """The key service withdrew an open model's lease (device revoked, licence ended, vault gone).

    The model's plaintext was zeroized when the lease was lost; the handle refuses further use.
    """

    exit_code = 17


class ListenError(ModelSealError):
    """A server (vault, agent, emulated card) cannot listen where it was told: the address is in use,
    not local, or its folder is missing."""

    exit_code = 18
