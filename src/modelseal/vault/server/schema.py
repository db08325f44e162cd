"""Every table of the vault (SQLAlchemy 2 ORM). Secret columns hold barrier ciphertexts (barrier.py),
never plaintext; migrations/ creates and evolves them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

class Base(DeclarativeBase):
    pass

class Domain(Base):
    __tablename__ = "domains"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created: Mapped[str] = mapped_column(String(32))
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # row_macs.py


class MasterKey(Base):
    __tablename__ = "master_keys"
    __table_args__ = (UniqueConstraint("domain_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    created: Mapped[str] = mapped_column(String(32))
    latest_version: Mapped[int] = mapped_column(Integer)
    min_decryption_version: Mapped[int] = mapped_column(Integer, default=1)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    deletion_allowed: Mapped[bool] = mapped_column(Boolean, default=False)
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # row_macs.py


class MasterKeyVersion(Base):
    __tablename__ = "master_key_versions"
    __table_args__ = (UniqueConstraint("key_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("master_keys.id"))
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[str] = mapped_column(String(32))
    material: Mapped[bytes] = mapped_column(LargeBinary)  # barrier ciphertext, never plaintext

class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accessor: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    display_name: Mapped[str] = mapped_column(String(128), default="")
    created: Mapped[str] = mapped_column(String(32))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # row_macs.py


class TokenUsage(Base):
    """Migration 0005 (tokens.py): a token's last use (to the minute) and when it was revoked.

    A table of its own rather than columns of ``tokens``, so code and data of the older schema
    (the tokens table as 0001 made it) keep working unchanged.
    """

    __tablename__ = "token_usage"
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), primary_key=True)
    last_used: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    revoked_at: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)

class AuditRecord(Base):
    __tablename__ = "audit"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(32))
    domain: Mapped[str] = mapped_column(String(128))
    op: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly the bytes hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("domain_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    name: Mapped[str] = mapped_column(String(128))
    groups: Mapped[str] = mapped_column(Text)  # JSON list
    created: Mapped[str] = mapped_column(String(32))
    psk_generation: Mapped[int] = mapped_column(Integer)
    psk_rotated: Mapped[str] = mapped_column(String(32))
    psk: Mapped[bytes] = mapped_column(LargeBinary)  # barrier ciphertext, never plaintext
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Attestation (migration 0004): Ed25519 identity public key || expected measurement, as barrier
    # ciphertext. Not secret, but storage is untrusted and a swapped key would send file keys to
    # whoever holds its private half: the barrier's AEAD (bound to the row) makes a swap fail.
    identity: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    identity_generation: Mapped[int] = mapped_column(Integer, default=0)
    identity_enrolled: Mapped[str | None] = mapped_column(String(32), nullable=True)
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # row_macs.py


class AuthFailure(Base):
    """A failed proof towards a lockout, keyed by the claimed (domain, name), not by a device row.

    So an unknown name writes the same rows as a known one with a wrong PSK and neither the answer
    nor the work behind it says which names exist (tests/adversarial/test_psk_timing.py).
    """

    __tablename__ = "auth_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(64))  # HMAC of the claimed names under the root
    at: Mapped[float] = mapped_column(Float)

class ReleaseNonce(Base):
    __tablename__ = "release_nonces"
    __table_args__ = (UniqueConstraint("device_id", "nonce_hash", name="release_nonces_device_nonce"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    nonce_hash: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[int] = mapped_column(BigInteger)

class AttestNonce(Base):
    """A challenge of attestation.py (migration 0004): SHA-256 of the nonce, which the report carries."""

    __tablename__ = "attest_nonces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    nonce_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)
    used: Mapped[float | None] = mapped_column(Float, nullable=True)

class Policy(Base):
    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("domain_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    name: Mapped[str] = mapped_column(String(128))
    key_name: Mapped[str] = mapped_column(String(128))
    devices: Mapped[str] = mapped_column(Text)  # JSON list
    groups: Mapped[str] = mapped_column(Text)  # JSON list
    created: Mapped[str] = mapped_column(String(32))
    updated: Mapped[str] = mapped_column(String(32))
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # row_macs.py


class Licence(Base):
    __tablename__ = "licences"
    __table_args__ = (UniqueConstraint("domain_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    name: Mapped[str] = mapped_column(String(128))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    created: Mapped[str] = mapped_column(String(32))
    not_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_devices: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    # How many devices hold the licence (licence_devices rows), kept here so the row's MAC binds it:
    # deleting a licence_devices row frees no slot (migration 0007).
    device_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # row_macs.py


class LicenceDevice(Base):
    __tablename__ = "licence_devices"
    __table_args__ = (UniqueConstraint("licence_id", "device_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    licence_id: Mapped[int] = mapped_column(ForeignKey("licences.id"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # row_macs.py
