"""Token list and revocation: when a token was last used and when it was revoked.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token_usage",
        sa.Column("token_id", sa.Integer, sa.ForeignKey("tokens.id"), primary_key=True),
        sa.Column("last_used", sa.String(32), nullable=True),
        sa.Column("revoked_at", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("token_usage")
