"""The model repository: one row per sealed model file (its blob lives on disk, not in the database).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        # JSON list of "key_name:key_version" taken from the file's vault stanzas at upload time.
        sa.Column("key_refs", sa.Text, nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("uploaded_by", sa.String(32), nullable=False),
        sa.UniqueConstraint("domain_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("models")
