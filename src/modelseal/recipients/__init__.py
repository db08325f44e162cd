"""Recipients wrap a file key into header stanzas; identities unwrap it."""

from .base import Identity, Recipient
from .mek import MEK
from .passphrase import Passphrase
from .x25519 import X25519Identity, X25519Recipient

__all__ = ["MEK", "Identity", "Passphrase", "Recipient", "X25519Identity", "X25519Recipient"]
