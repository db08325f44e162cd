"""Migration 0002 on top of a vault made at 0001, and the ORM models matching the migrated schema."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

import modelseal.vault.server.devices  # noqa: F401 - registers the second increment's tables on Base
from modelseal.vault.server import store as store_module
from modelseal.vault.server.barrier import KeyFileBarrier
from modelseal.vault.server.callers import token_hash
from modelseal.vault.server.devices import DeviceStore
from modelseal.vault.server.engine import make_engine, sqlite_url, upgrade_schema
from modelseal.vault.server.repository import ModelRecord  # noqa: F401 - registers the repository's table on Base
from modelseal.vault.server.row_macs import bind_unbound
from modelseal.vault.server.schema import Base
from modelseal.vault.server.store import Store


def test_upgrade_from_0001_keeps_keys_and_matches_the_models(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path))
    config = Config()
    config.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    barrier = KeyFileBarrier(bytes(range(32)))
    material = os.urandom(32)
    with engine.begin() as conn:  # what a 0001 vault held: an admin token and a key, written by hand
        conn.execute(
            text(
                "INSERT INTO tokens (accessor, token_hash, role, domain_id, display_name, created, revoked)"
                " VALUES ('a1', :hash, 'admin', 1, 'old admin', 'then', 0)"
            ),
            {"hash": token_hash("msv.old-admin")},
        )
        conn.execute(
            text(
                "INSERT INTO master_keys (id, domain_id, name, type, created, latest_version,"
                " min_decryption_version, disabled, deletion_allowed)"
                " VALUES (1, 1, 'old-key', 'aes256-gcm', 'then', 1, 1, 0, 0)"
            )
        )
        blob = barrier.encrypt(material, table="master_key_versions", row="1/old-key/1", purpose="aes256-gcm")
        conn.execute(
            text(
                "INSERT INTO master_key_versions (key_id, version, created, material)"
                " VALUES (1, 1, 'then', :blob)"
            ),
            {"blob": blob},
        )

    upgrade_schema(engine)
    first = Store(engine, barrier)
    with first.write_session() as session:  # `vault audit anchor` binds an older vault's rows
        assert bind_unbound(session, barrier) == 2
    admin = first.authenticate("msv.old-admin")
    assert first.read_key(admin, "old-key").latest_version == 1
    assert first.datakey(admin, "old-key", plaintext=True).plaintext  # the old material still opens
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
