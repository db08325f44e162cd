"""Errors of the key service client and server side; each is a one-line ModelSealError.

Exit codes 12-16 belong to the vault (0-10 are the core tool's, see `modelseal --help`).
"""

from __future__ import annotations

from ..errors import ModelSealError


class KeyServiceError(ModelSealError):
    """The vault refused or failed a request (the message says why, never with key material).

    ``code`` is the stable machine-readable name and ``status`` the HTTP status the API answers
    with; the client rebuilds the same class from them.
    """

    exit_code = 12
    code = "bad_request"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class PermissionDenied(KeyServiceError):
    """No token, an unknown token, or a role that may not do this."""

    exit_code = 13
    code = "permission_denied"
    status = 403


class NotFound(KeyServiceError):
    """The named key (or other object) does not exist in this domain."""

    exit_code = 14
    code = "not_found"
    status = 404


class Unavailable(KeyServiceError):
    """The vault is sealed, unreachable, or its storage is not ready."""

    exit_code = 15
    code = "unavailable"
    status = 503


class AuditChainError(KeyServiceError):
    """The audit hash chain is broken: a record was modified, deleted or reordered."""

    exit_code = 16
    code = "audit_chain_broken"
    status = 500
