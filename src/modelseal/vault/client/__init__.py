"""Talking to the key service from anywhere (an owner's machine, an edge device, a container): httpx
and ``cryptography`` only, so ``pip install 'modelseal[edge]'`` is enough and importing this loads
no SQLAlchemy, Alembic, Starlette, FastAPI, uvicorn or gRPC (tests/test_layers.py checks it).

api         VaultClient: the REST API (keys, data keys, devices, policies, tokens, models, audit)
recipient   VaultRecipient (seal under a vault data key), VaultIdentity (open with a token);
            the `vault` stanza's arguments
device      DeviceIdentity: open as a device with its PSK (HPKE-sealed release to a fresh key)
attested    the attested host flow: the vault releases a model's key to an accelerator card
            (imports modelseal.device, hence gRPC: import it by its module name, it is not re-exported)

May import: the core, keyrelease, vault.errors. Never the vault server.
"""

from __future__ import annotations

from .api import DataKeyAnswer, VaultClient, read_token_file
from .device import Credential, DeviceIdentity, load_credential, load_psk
from .recipient import VaultIdentity, VaultRecipient

__all__ = [
    "Credential",
    "DataKeyAnswer",
    "DeviceIdentity",
    "VaultClient",
    "VaultIdentity",
    "VaultRecipient",
    "load_credential",
    "load_psk",
    "read_token_file",
]
