"""Attestation-based key release: enrolled device identity keys and the challenge nonces.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        # Barrier ciphertext of (Ed25519 public key || expected measurement); NULL: not enrolled.
        batch.add_column(sa.Column("identity", sa.LargeBinary, nullable=True))
        batch.add_column(sa.Column("identity_generation", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("identity_enrolled", sa.String(32), nullable=True))
    op.create_table(
        "attest_nonces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        # SHA-256 of the nonce, which is also what the device's report carries: looked up, never
        # the nonce itself. Unique, so one nonce can only ever be one row to consume.
        sa.Column("nonce_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("used", sa.Float, nullable=True),
    )
    op.create_index("attest_nonces_device_created", "attest_nonces", ["device_id", "created"])


def downgrade() -> None:
    op.drop_table("attest_nonces")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("identity_enrolled")
        batch.drop_column("identity_generation")
        batch.drop_column("identity")
