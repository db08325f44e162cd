"""Guards the exported surface: adding or removing a public name must be deliberate."""

from __future__ import annotations

import modelseal

EXPECTED = {
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
    "LeasedHandle",
    "LeaseLostError",
    "ListenError",
    "LeasePolicy",
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
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(modelseal.__all__) == EXPECTED
    assert all(hasattr(modelseal, name) for name in modelseal.__all__)


def test_every_error_has_one_root() -> None:
    errors = [getattr(modelseal, n) for n in modelseal.__all__ if n.endswith("Error")]
    assert all(issubclass(e, modelseal.ModelSealError) for e in errors)
    codes = {e.exit_code for e in errors}
    assert 0 not in codes
