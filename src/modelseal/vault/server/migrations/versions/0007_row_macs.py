"""Rows that decide access carry a MAC under the barrier (row_macs.py); licences count their devices.

Revision ID: 0007
Revises: 0006

The column is added empty: a migration does not hold the root key. Rows of an older vault are bound
by `modelseal vault audit anchor`, which the vault asks for when it finds them; until then it
refuses them like any row whose MAC does not verify.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("domains", "devices", "tokens", "master_keys", "policies", "licences", "licence_devices")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("mac", sa.LargeBinary, nullable=True))
    with op.batch_alter_table("licences") as batch:
        batch.add_column(sa.Column("device_count", sa.Integer, nullable=False, server_default="0"))
    op.execute(
        "UPDATE licences SET device_count ="
        " (SELECT count(*) FROM licence_devices WHERE licence_devices.licence_id = licences.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("licences") as batch:
        batch.drop_column("device_count")
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("mac")
