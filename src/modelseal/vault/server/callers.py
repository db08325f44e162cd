"""Who calls the API: bearer tokens (random, stored only as a hash) and the Principal a token stands
for (accessor, role, domain)."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

ROLES = ("admin", "operator", "auditor")

_TOKEN_PREFIX = "msv."  # noqa: S105 - a name, not a secret

def new_token() -> str:
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()

def token_hash(token: str) -> str:
    # Tokens carry 256 random bits: a plain hash can't be brute-forced, and unlike an HMAC under the
    # root it still authenticates callers while the barrier is sealed (they then get a clean 503).
    return hashlib.sha256(b"modelseal vault token v1\x00" + token.encode()).hexdigest()

@dataclass(frozen=True)
class Principal:
    accessor: str
    role: str
    domain: str
    domain_id: int
