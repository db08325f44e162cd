"""Alembic migrations of the vault schema, applied in code by store.upgrade_schema()."""
