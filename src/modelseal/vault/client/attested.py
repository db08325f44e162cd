"""The host side of an attested key release: challenge, card report, vault release, card load.

    with VaultClient(url, ca=ca) as vault, DeviceClient(host, port, card_id) as card:
        loaded = release_to_device(vault, card, "model.onnx.mseal", device="card-7")
        outputs = card.run(loaded.handle, {"x": x})

The host is untrusted and this module keeps it that way: it reads only the sealed model's header
(public: the `vault` stanza's key name, version and wrapped body), passes the vault's nonce to the
card and the card's signed report to the vault, and hands the vault's answer, HPKE-sealed to the
card's session key, to the card together with the model's bytes. It never holds a key that opens
anything. Needs the `vault` and `device` extras.
"""

from __future__ import annotations

import os

from ...device.client import DeviceClient, LoadedModel, SealedRelease
from ...errors import UsageError
from ...opening import open_sealed_file, read_header
from .api import VaultClient
from .recipient import STANZA_TYPE, parse_args


def vault_stanza(sealed: str | os.PathLike[str], key_name: str | None = None) -> tuple[str, int, bytes]:
    """(key name, version, wrapped body) of the model's `vault` stanza (the one named, if given)."""
    with open_sealed_file(sealed) as f:
        header = read_header(f)
    for stanza in header.stanzas:
        if stanza.type != STANZA_TYPE:
            continue
        name, version = parse_args(stanza)
        if key_name is None or name == key_name:
            return name, version, stanza.body
    which = f"for key {key_name!r} " if key_name is not None else ""
    raise UsageError(f"{sealed} has no vault recipient stanza {which}(seal it with --vault-key)")


def release_to_device(
    vault: VaultClient,
    card: DeviceClient,
    sealed: str | os.PathLike[str],
    *,
    device: str,
    domain: str = "default",
    key_name: str | None = None,
) -> LoadedModel:
    """Have the vault release the model's key to ``card`` (vault device ``device``) and load it."""
    name, version, wrapped = vault_stanza(sealed, key_name)
    nonce = vault.attest_challenge(device, domain=domain)
    report = card.attestation_report(nonce)
    sealed_key = vault.attest_release(device, report, name, version, wrapped, nonce, domain=domain)
    return card.load(sealed, SealedRelease(sealed_key, domain, device, name, version, nonce))
