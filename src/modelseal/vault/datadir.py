"""The vault's data folder: what `vault init` creates and `vault serve` runs from.

DIR/               0700
  vault.json       root type and layout version
  root.key         0600, the barrier root (key-file root)
  vault.db         SQLite (+ -wal, -shm)
  admin.token      0600, the first admin token
  tls/             ca.pem, ca.key (0600), server.pem, server.key (0600)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError, UsageError
from . import tls
from .barrier import KeyFileBarrier, create_root_key
from .errors import KeyServiceError
from .store import Store, make_engine, sqlite_url, upgrade_schema

ROOT_TYPES = ("key-file",)  # Shamir and PKCS#11 come later, behind the same Barrier protocol
CONFIG_FILE = "vault.json"
ROOT_FILE = "root.key"
TOKEN_FILE = "admin.token"  # noqa: S105 - a name, not a secret
TLS_DIR = "tls"


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

    def open_store(self, database_url: str | None = None) -> Store:
        """Barrier from the root, engine, schema upgraded to head."""
        self.config()
        barrier = KeyFileBarrier.from_file(self.path / ROOT_FILE)
        engine = make_engine(database_url or sqlite_url(self.path))
        upgrade_schema(engine)
        return Store(engine, barrier)


def init(path: str | os.PathLike[str], root: str = "key-file", database_url: str | None = None) -> str:
    """Create a vault data folder; returns the first admin token (also written to DIR/admin.token)."""
    if root not in ROOT_TYPES:
        raise UsageError(f"--root must be one of {', '.join(ROOT_TYPES)} in this version")
    folder = Path(path)
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if any(folder.iterdir()):
            raise OutputError(
                f"{folder} exists and is not empty: refusing to initialise a vault there"
            ) from None
    os.chmod(folder, 0o700)
    create_root_key(folder / ROOT_FILE)
    tls.generate(folder / TLS_DIR)
    (folder / CONFIG_FILE).write_text(json.dumps({"layout": 1, "root": root}) + "\n")
    store = DataDir(folder).open_store(database_url)
    token = store.bootstrap_admin()
    store.engine.dispose()
    if (folder / "vault.db").exists():
        os.chmod(folder / "vault.db", 0o600)  # SQLite gives -wal and -shm the database's mode
    fd = os.open(folder / TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def serve(
    path: str | os.PathLike[str],
    host: str,
    port: int,
    *,
    database_url: str | None = None,
    insecure_http: bool = False,
) -> None:
    import uvicorn

    from .app import create_app

    data = DataDir(Path(path))
    app = create_app(data.open_store(database_url))
    cert, key = (None, None) if insecure_http else (str(data.cert), str(data.key))
    uvicorn.run(
        app, host=host, port=port, server_header=False, log_level="info", ssl_certfile=cert, ssl_keyfile=key
    )
