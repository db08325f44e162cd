"""Migration 0002 on top of a vault made at 0001, and the ORM models matching the migrated schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import modelseal.vault.server.devices  # noqa: F401 - registers the second increment's tables on Base
from modelseal.vault.server import store as store_module
from modelseal.vault.server.barrier import KeyFileBarrier
from modelseal.vault.server.devices import DeviceStore
from modelseal.vault.server.engine import make_engine, sqlite_url, upgrade_schema
from modelseal.vault.server.repository import ModelRecord  # noqa: F401 - registers the repository's table on Base
from modelseal.vault.server.schema import Base
from modelseal.vault.server.store import Store


def test_upgrade_from_0001_keeps_keys_and_matches_the_models(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path))
    config = Config()
    config.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    first = Store(engine, KeyFileBarrier(bytes(range(32))))
    admin = first.authenticate(first.bootstrap_admin())
    first.create_key(admin, "old-key")

    upgrade_schema(engine)
    assert first.read_key(admin, "old-key").latest_version == 1
    devices = DeviceStore(first)
    devices.create_device(admin, "cam", ["edge"])
    assert devices.put_policy(admin, "p", "old-key", [], ["edge"])["groups"] == ["edge"]
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        head = ScriptDirectory.from_config(config).get_current_head()
        assert head is not None and int(head) >= 3
        assert context.get_current_revision() == head
        drift = [
            d
            for d in compare_metadata(context, Base.metadata)
            # Plain (non-unique) indexes are declared only in the migrations, like 0001's audit index.
            if d[0] != "remove_index"
        ]
    assert drift == []
    engine.dispose()
