"""The vault's data folder: what `vault init` creates and `vault serve` runs from.

DIR/               0700
  vault.json       root type and layout version; for shamir/pkcs11 roots also the vault id and the
                   root's public part (key-check value / token-encrypted root), never a secret
  root.key         0600, the barrier root (key-file root)
  vault.db         SQLite (+ -wal, -shm)
  admin.token      0600, the first admin token
  audit.anchor     0600, the audit chain's last committed head, MAC'd under the root (audit_anchor.py)
  tls/             ca.pem, ca.key (0600), server.pem, server.key (0600)
  models/          0700, sealed model files of the repository: <domain>/<sha256>
"""

from __future__ import annotations

import json
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import KeyFileError, OutputError, UsageError
from ..errors import KeyServiceError, Unavailable
from . import tls
from .audit_anchor import ANCHOR_FILE, AuditAnchor
from .barrier import ROOT_KEY_SIZE, Barrier, KeyFileBarrier, RootBarrier, create_root_key
from .engine import make_engine, sqlite_url, upgrade_schema
from .roots import pkcs11 as pkcs11_root
from .roots import shamir as shamir_root
from .store import Store

if TYPE_CHECKING:
    from ...service.connections import ConnectionLimits
    from .admission import ReleaseSettings

ROOT_TYPES = ("key-file", "shamir", "pkcs11")
CONFIG_FILE = "vault.json"
ROOT_FILE = "root.key"
TOKEN_FILE = "admin.token"  # noqa: S105 - a name, not a secret
TLS_DIR = "tls"
MODELS_DIR = "models"  # the model repository's blobs: models/<domain>/<sha256>


@dataclass(frozen=True)
class DataDir:
    path: Path

    @property
    def ca(self) -> Path:
        return self.path / TLS_DIR / tls.CA_FILE

    @property
    def cert(self) -> Path:
        return self.path / TLS_DIR / tls.CERT_FILE

    @property
    def key(self) -> Path:
        return self.path / TLS_DIR / tls.KEY_FILE

    @property
    def admin_token(self) -> Path:
        return self.path / TOKEN_FILE

    def config(self) -> dict[str, object]:
        try:
            data = json.loads((self.path / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            raise KeyServiceError(
                f"{self.path} is not a vault data folder (run `modelseal vault init`)"
            ) from None
        if not isinstance(data, dict) or data.get("root") not in ROOT_TYPES:
            raise KeyServiceError(f"{self.path / CONFIG_FILE} names an unknown root type")
        return data

    def barrier(self, config: dict[str, object] | None = None) -> Barrier:
        """The root this folder names: the key file, a sealed Shamir barrier, or the token's root."""
        config = config or self.config()
        if config["root"] == "key-file":
            return KeyFileBarrier.from_file(self.path / ROOT_FILE)
        vault_id = config.get("vault_id")
        if not isinstance(vault_id, str) or not re.fullmatch("[0-9a-f]{32}", vault_id):
            raise KeyServiceError(f"{self.path / CONFIG_FILE} holds no valid vault_id")
        if config["root"] == "shamir":
            return shamir_root.ShamirBarrier.from_config(vault_id, config.get("shamir"))
        root = pkcs11_root.open_root(config.get("pkcs11"), vault_id)
        try:
            return RootBarrier(root)
        finally:
            shamir_root.wipe(root)

    def open_store(
        self,
        database_url: str | None = None,
        *,
        barrier: Barrier | None = None,
        check: bool = True,
        shared_sqlite: bool = False,
    ) -> Store:
        """Barrier from the root (unless given), engine, schema upgraded to head; unless ``check`` is
        False, the database must hold what this folder's anchor says was committed (a sealed
        barrier is checked when it unseals)."""
        config = self.config()
        if database_url is None:
            self.check_writable()
        barrier = barrier or self.barrier(config)
        engine = make_engine(database_url or sqlite_url(self.path), shared_sqlite=shared_sqlite)
        try:
            upgrade_schema(engine)
            store = Store(engine, barrier, AuditAnchor(self.path / ANCHOR_FILE, barrier))
            if check and not barrier.sealed:
                store.check_integrity()
        except BaseException:
            engine.dispose()
            raise
        return store


    def check_writable(self) -> None:
        """The SQLite database lives here: refuse a folder the vault could not write (one line,
        before SQLite's own "unable to open database file")."""
        read_only = bool(os.statvfs(self.path).f_flag & os.ST_RDONLY)
        if read_only or not os.access(self.path, os.W_OK):
            why = "on a read-only filesystem" if read_only else "not writable"
            raise Unavailable(
                f"the data folder {self.path} is {why}: the vault writes its database and WAL there",
                code="storage_read_only",
            )


def refuse_used_database(url: str) -> None:
    """A shared database (PostgreSQL) may already hold a vault: a second `init` would add an admin
    and a root key that can't open its secrets. Checked before anything is created in DIR."""
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import OperationalError

    from .engine import driver_reason

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            used = (
                inspect(conn).has_table("audit")
                and conn.execute(text("SELECT 1 FROM audit LIMIT 1")).first() is not None
            )
    except OperationalError as e:
        raise Unavailable(
            f"the database is not reachable: {driver_reason(e)}", code="storage_unavailable"
        ) from None
    finally:
        engine.dispose()
    if used:
        raise OutputError(
            "the database already holds a vault: serve it with the data folder made for it "
            "(copy that folder to each vault process), or give an empty database"
        )


def init(
    path: str | os.PathLike[str],
    root: str = "key-file",
    database_url: str | None = None,
    *,
    shamir: shamir_root.ShamirOptions | None = None,
    pkcs11: pkcs11_root.Pkcs11Options | None = None,
) -> str:
    """Create a vault data folder; returns the first admin token (also written to DIR/admin.token).

    A shamir root writes its shares last, once everything else exists, so a failed init leaves no
    shares of a vault that does not exist.
    """
    if root not in ROOT_TYPES:
        raise UsageError(f"--root must be one of {', '.join(ROOT_TYPES)} in this version")
    if (root == "shamir") != (shamir is not None) or (root == "pkcs11") != (pkcs11 is not None):
        raise UsageError(
            "--root shamir takes --shares, --threshold and --share-dir; "
            "--root pkcs11 takes --module, --token and --pin-file; neither goes with another root"
        )
    if database_url is not None:
        refuse_used_database(database_url)
    folder = Path(path)
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if any(folder.iterdir()):
            raise OutputError(
                f"{folder} exists and is not empty: refusing to initialise a vault there"
            ) from None
    os.chmod(folder, 0o700)
    if shamir is not None:
        shamir_root.prepare_share_dir(shamir)
    config: dict[str, object] = {"layout": 1, "root": root}
    new_root, barrier, vault_id = bytearray(), None, os.urandom(16).hex()
    share_values: list[bytearray] = []
    if root == "key-file":
        create_root_key(folder / ROOT_FILE)
    else:
        new_root = bytearray(os.urandom(ROOT_KEY_SIZE))
        config["vault_id"] = vault_id
    try:
        if shamir is not None:
            share_values = shamir_root.split_root(new_root, shamir.shares, shamir.threshold)
            config["shamir"] = shamir_root.config_section(shamir, vault_id, new_root, share_values)
        if pkcs11 is not None:
            config["pkcs11"] = pkcs11_root.create(pkcs11, vault_id, new_root)
        if new_root:
            barrier = RootBarrier(new_root)
        tls.generate(folder / TLS_DIR)
        _write_config(folder / CONFIG_FILE, config)
        store = DataDir(folder).open_store(database_url, barrier=barrier)
        token = store.bootstrap_admin()
        store.engine.dispose()
        if (folder / "vault.db").exists():
            os.chmod(folder / "vault.db", 0o600)  # SQLite gives -wal and -shm the database's mode
        fd = os.open(folder / TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        if shamir is not None:
            shamir_root.write_shares(shamir, vault_id, share_values)
    finally:
        shamir_root.wipe(new_root)
        for value in share_values:
            shamir_root.wipe(value)
    return token


def _write_config(path: Path, config: dict[str, object]) -> None:
    """vault.json via a temp file and a rename: a crash leaves the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def serve(
    path: str | os.PathLike[str],
    host: str,
    port: int,
    *,
    database_url: str | None = None,
    insecure_http: bool = False,
    models_dir: str | os.PathLike[str] | None = None,
    max_model_size: int | None = None,
    release_settings: ReleaseSettings | None = None,
    allow_export: bool = False,
    metrics_public: bool = False,
    client_ca: str | os.PathLike[str] | None = None,
    client_cert_required: bool = False,
    sqlite_shared: bool = False,
    limits: ConnectionLimits | None = None,
) -> None:
    import uvicorn

    from ...service.connections import TLS12_CIPHERS, ConnectionLimits, listen
    from ...service.logs import JsonLog
    from . import metrics
    from .app import create_app

    cert_reqs = _client_cert_reqs(client_ca, client_cert_required, insecure_http)
    sock = listen(host, port)  # a port in use is one line, before anything is opened or logged
    log = JsonLog()
    metrics.configure_logging(log)  # from here on every line on stderr is one JSON object
    data = DataDir(Path(path))
    # Model blobs default to DIR/models; replicas sharing one database need one shared --models-dir.
    models = str(models_dir) if models_dir is not None else str(data.path / MODELS_DIR)
    app = create_app(
        data.open_store(database_url, shared_sqlite=sqlite_shared),
        models_dir=models,
        max_model_size=max_model_size,
        release_settings=release_settings,
        allow_export=allow_export,
        metrics_public=metrics_public,
        log=log,
    )
    cert, key = (None, None) if insecure_http else (str(data.cert), str(data.key))
    if insecure_http:
        log.event("insecure_http", level="warning", message="serving plain HTTP: for tests only")
    log.event(
        "serve",
        address=f"{host}:{port}",
        tls=not insecure_http,
        client_certificates={ssl.CERT_NONE: "off", ssl.CERT_OPTIONAL: "optional"}.get(cert_reqs, "required"),
        export=allow_export,
        metrics_public=metrics_public,
    )
    try:
        config = uvicorn.Config(
            app,
            server_header=False,
            log_level="info",
            ssl_certfile=cert,
            ssl_keyfile=key,
            # Our JSON lines replace uvicorn's text logs and its access log (metrics.py).
            log_config=None,
            access_log=False,
            ssl_ca_certs=str(client_ca) if client_ca is not None else None,
            ssl_cert_reqs=cert_reqs,
            ssl_ciphers=TLS12_CIPHERS,
            **(limits or ConnectionLimits()).uvicorn_config(),  # head deadline, keep-alive, cap, stop
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        # uvicorn has drained the connections: commit what is still queued, stop the writer.
        app.state.release_gate.close()


def _client_cert_reqs(
    client_ca: str | os.PathLike[str] | None, required: bool, insecure_http: bool
) -> ssl.VerifyMode:
    """serve's --client-ca / --client-cert-required as the TLS verify mode, checked before binding."""
    if client_ca is None:
        if required:
            raise UsageError("--client-cert-required needs --client-ca CA.pem (the CA that signs them)")
        return ssl.CERT_NONE
    if insecure_http:
        raise UsageError("--client-ca needs TLS: it does not go with --insecure-http")
    try:
        ssl.create_default_context(cafile=str(client_ca))
    except (OSError, ssl.SSLError, ValueError):
        raise KeyFileError(f"cannot load the client CA {client_ca} (PEM certificates expected)") from None
    return ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
