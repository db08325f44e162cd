"""The agent's node-local cache of sealed models: ciphertext only, named by its SHA-256.

Nothing here is secret (the files are sealed; opening one needs a key released to a container),
but a cached file is served only after the vault authorised the request (it answered 304 to our
If-None-Match), so a revoked device gets nothing from the cache either.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

_SHA256 = re.compile(r"[0-9a-f]{64}")
_INDEX = "index.json"
_MAX_INDEX_BYTES = 4 << 20


def etag_digest(etag: str | None) -> str | None:
    """The SHA-256 hex in a strong ETag `"<hex>"`, or None if it is not one of ours."""
    if etag is None:
        return None
    value = etag.strip().removeprefix("W/").strip('"')
    return value if _SHA256.fullmatch(value) else None


class ModelCache:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._index: dict[str, str] = self._load_index()

    def _load_index(self) -> dict[str, str]:
        try:
            with open(self.folder / _INDEX, "rb") as f:
                data = json.loads(f.read(_MAX_INDEX_BYTES))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items() if _SHA256.fullmatch(str(v))}

    def _save_index(self) -> None:
        tmp = self.folder / f".{_INDEX}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self._index, sort_keys=True))
        os.replace(tmp, self.folder / _INDEX)

    def blob(self, digest: str) -> Path:
        return self.folder / f"{digest}.mseal"

    def lookup(self, model_key: str) -> str | None:
        """The digest of the cached copy of a model, if the file is still there."""
        with self._lock:
            digest = self._index.get(model_key)
        if digest is not None and self.blob(digest).is_file():
            return digest
        return None

    def new_temp(self) -> tuple[int, Path]:
        name = f".incoming.{os.getpid()}.{threading.get_ident()}.{os.urandom(6).hex()}"
        path = self.folder / name
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path

    def commit(self, model_key: str, temp: Path, digest: str) -> Path:
        """Move a verified download into place (atomic) and remember it for ``model_key``."""
        target = self.blob(digest)
        os.replace(temp, target)
        with self._lock:
            self._index[model_key] = digest
            self._save_index()
        return target

    @staticmethod
    def hasher() -> hashlib._Hash:
        return hashlib.sha256()
