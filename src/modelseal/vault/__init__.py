"""The vault: modelseal's key service (master keys, data keys, devices, policies, licences, the
HPKE-sealed key release, the model repository, the hash-chained audit).

errors   the vault's errors (exit codes 12-16), shared by both sides
client/  what owners and devices run: VaultClient, VaultRecipient/VaultIdentity, DeviceIdentity
         (httpx only: ``pip install 'modelseal[edge]'``)
server/  the key service itself (``pip install 'modelseal[vault]'``): storage, barrier, release, HTTP

Importing this package needs no optional dependency; ``client`` needs httpx, ``server`` the vault extra.
See docs/architecture.md for what may import what, docs/vault-api.md for the API.
"""

from .errors import AuditChainError, KeyServiceError, NotFound, PermissionDenied, Unavailable

__all__ = ["AuditChainError", "KeyServiceError", "NotFound", "PermissionDenied", "Unavailable"]
