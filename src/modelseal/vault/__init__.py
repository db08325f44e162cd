"""The vault: modelseal's key service (master keys, data keys, devices, release, audit).

What exists: a key-file root (barrier), master keys with versions, data keys for the `vault`
recipient stanza, admin/operator/auditor tokens, devices with PSKs, policies, licences, the
HPKE-sealed key release (``device_identity.DeviceIdentity`` on the device side), a hash-chained
audit, a REST API and its client. What does not yet: group commit, Shamir/PKCS#11 roots, the model
repository (see docs/vault-api.md). Importing this package needs no optional dependency; its modules do.
"""

from .errors import AuditChainError, KeyServiceError, NotFound, PermissionDenied, Unavailable

__all__ = ["AuditChainError", "KeyServiceError", "NotFound", "PermissionDenied", "Unavailable"]
