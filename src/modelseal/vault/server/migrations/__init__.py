"""Alembic migrations of the vault schema, applied in code by engine.upgrade_schema()."""
