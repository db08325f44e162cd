"""The key service's server: storage, the barrier, the release decision, the HTTP API. The CLI
reaches it through the names below; everything else here is internal to the server.

datadir        a vault's data folder: init (root, database, TLS, admin token) and serve (uvicorn)
app            create_app: the FastAPI app and its token and role checks; it only includes the
               routes, one module per resource, each named <resource>_api: sys_api (health,
               readiness, seal, unseal, audit), keys_api, tokens_api, devices_api, policies_api,
               release_api (POST /v1/release, answered first by release_fastpath), attest_api,
               leases_api, models_api, export_api, shares_api
http_common    API prefix, roles of each route kind, the one refusal body, the release body parser
schema         every table (SQLAlchemy 2 ORM); engine: SQLite/PostgreSQL connections, migrations
store          operations on keys, data keys and tokens; write_session anchors each commit's head
callers        bearer tokens (stored as hashes) and the Principal a token stands for
audit          AuditLog (record: the append in the effect's transaction), the chain's hashes and
               its verification; audit_anchor: the head kept outside the database
row_macs       rows that decide access bound under the barrier (flush hook binds, load hook checks)
storage_guard  the database and WAL files still the ones the vault opened; request_limits: the
               token and the body bound checked before a body is read
barrier        the root (barrier) key that encrypts every secret at rest; roots/ keyfile's
               alternatives: shamir (starts sealed), pkcs11 (a key in a token)
devices        devices, PSKs, policies and licences (admin operations); device_rows: name rules,
               barrier rows of PSKs and identities, the one ReleaseDenied
release        ReleaseDecider: lockout, replay index, policy, licence counters, audit and the
               HPKE seal of one release; release_sql: its prepared statements
device_auth    a device's PSK proof on requests other than the release (leases, model downloads)
attestation    attestation-based release to accelerator cards (reports: keyrelease.report)
group_commit   one writer commits a batch of releases, each with its audit record, per fsync
admission      the release gate: in-flight limit, 429/503 with Retry-After
hot_sql        the release path's SQL compiled once and run on the driver connection
repository     the model repository (sealed files devices download)
leases         lease checks of open models (revocation reaches running devices)
tokens         token create/list/revoke; export: guarded key export
metrics        Prometheus text and the JSON request log
tls, nginx     certificates of init; the nginx gateway of the tests and the demo
writer_lock    one writing process per SQLite database; migrations/: Alembic

May import: the core, keyrelease, service, vault.errors, and vault.client (the stanza format);
never modelseal.device (the card) or the agent. Nothing outside the vault imports the server but
the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import UsageError
from .admission import ReleaseSettings
from .audit import verify_audit as verify_audit_chain
from .barrier import RootBarrier
from .datadir import ROOT_FILE, TOKEN_FILE, DataDir, init, serve
from .export import guard_fingerprint, parse_bundle
from .roots.pkcs11 import Pkcs11Options
from .roots.shamir import ShamirOptions, parse_share, read_share_file


@dataclass(frozen=True)
class AuditStatus:
    """What `vault audit verify` found: the records checked, and the anchored head (None when the
    root is sealed, so the anchor could not be read)."""

    records: int
    anchored: int | None


def verify_audit(data: str | Path, database: str | None = None) -> AuditStatus:
    """Check the audit hash chain of the vault whose data folder is ``data``, and that the database
    still holds the head the vault anchored (unless its root is sealed Shamir shares)."""
    folder = DataDir(Path(data))
    config = folder.config()
    barrier = RootBarrier(None) if config["root"] == "shamir" else folder.barrier(config)
    store = folder.open_store(database, barrier=barrier, check=False)
    try:
        records = verify_audit_chain(store.engine)
        head = None if barrier.sealed else store.audit.check_anchor(store.engine)
        return AuditStatus(records, None if head is None else head.seq)
    finally:
        store.engine.dispose()


def anchor_audit(data: str | Path, database: str | None = None) -> int:
    """Anchor the database's current audit head (after a deliberate restore from a backup, or for a
    vault made before anchors existed): checks the chain, records `audit.anchor` naming the head
    anchored before, and returns the record now anchored."""
    folder = DataDir(Path(data))
    config = folder.config()
    if config["root"] == "shamir":
        raise UsageError("a Shamir vault is anchored when it unseals: this command needs its root")
    store = folder.open_store(database, check=False)
    try:
        verify_audit_chain(store.engine)
        return store.reanchor_audit()
    finally:
        store.engine.dispose()


__all__ = [
    "ROOT_FILE",
    "TOKEN_FILE",
    "AuditStatus",
    "Pkcs11Options",
    "ReleaseSettings",
    "ShamirOptions",
    "anchor_audit",
    "guard_fingerprint",
    "init",
    "parse_bundle",
    "parse_share",
    "read_share_file",
    "serve",
    "verify_audit",
]
