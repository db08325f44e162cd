"""Devices with pre-shared keys, policies, licences, the release replay index and lockout failures.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("psk_generation", sa.Integer, nullable=False),
        sa.Column("psk_rotated", sa.String(32), nullable=False),
        sa.Column("psk", sa.LargeBinary, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("revoked_at", sa.String(32), nullable=True),
        sa.UniqueConstraint("domain_id", "name"),
    )
    op.create_table(
        "device_failures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("device_failures_device_at", "device_failures", ["device_id", "at"])
    op.create_table(
        "release_nonces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("nonce_hash", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        # The replay cache: workers share no memory, so single use is this index, not a dict.
        sa.UniqueConstraint("device_id", "nonce_hash", name="release_nonces_device_nonce"),
    )
    op.create_index("release_nonces_device_ts", "release_nonces", ["device_id", "timestamp"])
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_name", sa.String(128), nullable=False),
        sa.Column("devices", sa.Text, nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("updated", sa.String(32), nullable=False),
        sa.UniqueConstraint("domain_id", "name"),
    )
    op.create_index("policies_domain_key", "policies", ["domain_id", "key_name"])
    op.create_table(
        "licences",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id"), nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("not_after", sa.Float, nullable=True),
        sa.Column("max_uses", sa.Integer, nullable=True),
        sa.Column("max_devices", sa.Integer, nullable=True),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.UniqueConstraint("domain_id", "name"),
    )
    op.create_table(
        "licence_devices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("licence_id", sa.Integer, sa.ForeignKey("licences.id"), nullable=False),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        sa.UniqueConstraint("licence_id", "device_id"),
    )


def downgrade() -> None:
    for table in (
        "licence_devices",
        "licences",
        "policies",
        "release_nonces",
        "device_failures",
        "devices",
    ):
        op.drop_table(table)
