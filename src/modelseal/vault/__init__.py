"""The vault: modelseal's key service (master keys, data keys, tokens, audit), first increment.

What exists: a key-file root (barrier), master keys with versions, data keys for the `vault`
recipient stanza, admin/operator/auditor tokens, a hash-chained audit, a REST API and its client.
What does not yet: device PSKs, policies, licences, HPKE key release, Shamir/PKCS#11 roots (see
docs/vault-api.md). Importing this package needs no optional dependency; its modules do.
"""

from .errors import AuditChainError, KeyServiceError, NotFound, PermissionDenied, Unavailable

__all__ = ["AuditChainError", "KeyServiceError", "NotFound", "PermissionDenied", "Unavailable"]
