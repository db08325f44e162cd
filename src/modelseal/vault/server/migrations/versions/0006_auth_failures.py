"""Lockout failures keyed by the claimed names (an HMAC), so unknown names write the same rows.

Revision ID: 0006
Revises: 0005

The failures of the last 15 minutes are not carried over (their subjects are HMACs under the root
key, which a migration does not hold): an upgrade forgives them, as `vault device unlock` would.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("auth_failures_subject_at", "auth_failures", ["subject", "at"])
    op.create_index("auth_failures_at", "auth_failures", ["at"])
    op.drop_index("device_failures_device_at", table_name="device_failures")
    op.drop_table("device_failures")


def downgrade() -> None:
    op.create_table(
        "device_failures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("device_failures_device_at", "device_failures", ["device_id", "at"])
    op.drop_index("auth_failures_at", table_name="auth_failures")
    op.drop_index("auth_failures_subject_at", table_name="auth_failures")
    op.drop_table("auth_failures")
