"""The model repository: sealed model files kept by the vault, downloaded by operators and devices.

A row per model (table ``models``) names a content-addressed blob ``ROOT/<domain>/<sha256>`` on disk
(ROOT is ``DATA/models`` or ``vault serve --models-dir``). Uploads are streamed to a temporary file
in that folder (never held in memory), fsynced, checked to be a sealed model (magic, header, size),
and renamed into place in the transaction that writes the row and its audit record. The vault never
needs a model's key to store it: the `vault` stanzas' key names and versions are read from the
header and recorded, and a device may download a model only if it may release one of those keys
(policy and licence, ``device_auth.grant``). The blob is ciphertext, so the repository adds
distribution and access control, not confidentiality.

Blobs no longer named by any row are deleted in a write transaction of their own. Write transactions
are serialised (BEGIN IMMEDIATE on SQLite, the writers' advisory lock on PostgreSQL) and an upload
renames its file into place inside its own, so it can't race that deletion.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route signatures, which use
# the local Caller alias made in add_routes.
import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread
from fastapi import Request
from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.concurrency import run_in_threadpool

from ...errors import FormatError
from ...fileio import fsync_dir
from ...opening import read_header
from ..client import recipient
from ..errors import KeyServiceError, NotFound, Unavailable
from .callers import Principal
from .device_auth import DeviceProof, DeviceRequests
from .device_rows import Decision, check_id
from .schema import Base, Device, now
from .store import Store

DEFAULT_MAX_MODEL_SIZE = 64 << 30
CHUNK_SIZE = 1 << 20
MAX_KEY_REFS = 64
STALE_UPLOAD_SECONDS = 24 * 3600
_UPLOAD_PREFIX = ".upload-"
WRITE_MODELS = ("admin", "operator")
READ_MODELS = ("admin", "operator", "auditor")


class ModelRecord(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("domain_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    name: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    key_refs: Mapped[str] = mapped_column(Text)  # JSON list of "key_name:key_version"
    created: Mapped[str] = mapped_column(String(32))
    uploaded_by: Mapped[str] = mapped_column(String(32))


def key_refs_of(text: str) -> list[tuple[str, int]]:
    refs = []
    for ref in json.loads(text):
        name, _, version = str(ref).rpartition(":")
        refs.append((name, int(version)))
    return refs


def sealed_key_refs(path: Path) -> list[str]:
    """The `vault` stanzas' ``name:version`` of a sealed file, or FormatError if it is not one."""
    with open(path, "rb", buffering=0) as f:
        header = read_header(f)
        size = os.fstat(f.fileno()).st_size
    if size != header.header_length + header.core.payload_ciphertext_length:
        raise FormatError("not a sealed model: truncated or followed by extra bytes")
    refs: list[str] = []
    for stanza in header.stanzas:
        if stanza.type != recipient.STANZA_TYPE:
            continue
        name, version = recipient.parse_args(stanza)
        ref = f"{name}:{version}"
        if ref not in refs:
            refs.append(ref)
    if len(refs) > MAX_KEY_REFS:
        raise FormatError(f"a sealed model in the repository names at most {MAX_KEY_REFS} vault keys")
    return refs


def etag(sha256: str) -> str:
    return f'"{sha256}"'


def etag_matches(if_none_match: str | None, sha256: str) -> bool:
    if not if_none_match:
        return False
    wanted = etag(sha256)
    for item in if_none_match[:4096].split(","):
        tag = item.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


def _meta(row: ModelRecord, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.name,
        "size": row.size,
        "sha256": row.sha256,
        "keys": json.loads(row.key_refs),
        "created": row.created,
    }
    if full:
        out["uploaded_by"] = row.uploaded_by
    return out


@dataclass
class Download:
    meta: dict[str, Any]
    not_modified: bool
    file: BinaryIO | None = None


class TooLarge(KeyServiceError):
    code = "too_large"
    status = 413


class ModelRepository:
    def __init__(self, store: Store, requests: DeviceRequests, root: Path | None, max_size: int) -> None:
        self.store = store
        self.requests = requests
        self.root = root
        self.max_size = max_size

    # --- files -----------------------------------------------------------------------------------

    def folder(self, domain: str) -> Path:
        if self.root is None:
            raise Unavailable(
                "this vault has no model repository folder (vault serve --models-dir)",
                code="models_unavailable",
            )
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.root / domain
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def blob(self, domain: str, sha256: str) -> Path:
        return self.folder(domain) / sha256

    def remove_stale_uploads(self) -> None:
        """Temporary files of uploads cut off by a crash (a day old: no live upload is that slow)."""
        if self.root is None or not self.root.is_dir():
            return
        limit = time.time() - STALE_UPLOAD_SECONDS
        for path in self.root.glob(f"*/{_UPLOAD_PREFIX}*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < limit:
                    path.unlink()

    async def receive(self, who: Principal, request: Request) -> tuple[Path, int, str]:
        """Stream the body to a temporary file: (path, size, sha256 hex). Bounded by max_size."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_size:
            raise TooLarge(f"a model in this vault is at most {self.max_size} bytes")
        folder = await run_in_threadpool(self.folder, who.domain)
        fd, name = await run_in_threadpool(tempfile.mkstemp, "", _UPLOAD_PREFIX, str(folder))
        tmp = Path(name)
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                pending: list[bytes] = []
                held = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_size:
                        raise TooLarge(f"a model in this vault is at most {self.max_size} bytes")
                    pending.append(chunk)
                    held += len(chunk)
                    if held >= CHUNK_SIZE:
                        # Disk writes and hashing leave the event loop; at most ~1 MiB is held.
                        await anyio.to_thread.run_sync(_write, f, hasher, b"".join(pending))
                        pending, held = [], 0
                if pending:
                    await anyio.to_thread.run_sync(_write, f, hasher, b"".join(pending))
                await anyio.to_thread.run_sync(os.fsync, f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return tmp, size, hasher.hexdigest()

    # --- upload ----------------------------------------------------------------------------------

    def _row(self, session: Session, domain_id: int, model_id: str) -> ModelRecord | None:
        return session.execute(
            select(ModelRecord).where(ModelRecord.domain_id == domain_id, ModelRecord.name == model_id)
        ).scalar()

    def check_absent(self, who: Principal, model_id: str) -> None:
        """Refuse an upload over an existing id before its body is read (the commit re-checks)."""

        def run(session: Session) -> None:
            if self._row(session, who.domain_id, model_id) is not None:
                raise KeyServiceError(
                    f"model {model_id!r} exists (upload with replace to overwrite it)",
                    code="exists",
                    status=409,
                )

        self.store.operation(who, "model.upload", model_id, run)

    def commit(
        self, who: Principal, model_id: str, tmp: Path, size: int, sha256: str, replace: bool
    ) -> dict[str, Any]:
        """Check the temporary file is a sealed model, then move it into place with its row."""
        try:
            try:
                refs = sealed_key_refs(tmp)
            except (FormatError, ValueError):
                error = KeyServiceError("not a sealed model", code="not_sealed")
                self.store.record_refusal(who, "model.upload", model_id, error)
                raise error from None
            final = self.blob(who.domain, sha256)

            def run(session: Session) -> tuple[dict[str, Any], str | None]:
                row = self._row(session, who.domain_id, model_id)
                if row is not None and not replace:
                    raise KeyServiceError(f"model {model_id!r} exists", code="exists", status=409)
                old = row.sha256 if row is not None else None
                os.replace(tmp, final)
                fsync_dir(final.parent)
                if row is None:
                    row = ModelRecord(domain_id=who.domain_id, name=model_id)
                    session.add(row)
                row.size, row.sha256, row.key_refs = size, sha256, json.dumps(refs)
                row.created, row.uploaded_by = now(), who.accessor
                session.flush()
                self.store.audit.record(
                    session,
                    who.domain,
                    "model.upload",
                    who.accessor,
                    model=model_id,
                    size=size,
                    sha256=sha256,
                    keys=refs,
                    replaced=old is not None,
                )
                return _meta(row, full=True), old

            meta, old = self.store.operation(who, "model.upload", model_id, run)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if old is not None and old != sha256:
            self._collect(who.domain_id, who.domain, old)
        return meta

    def _collect(self, domain_id: int, domain: str, sha256: str) -> None:
        try:
            with self.store.write_session() as session:
                users = session.execute(
                    select(func.count(ModelRecord.id)).where(
                        ModelRecord.domain_id == domain_id, ModelRecord.sha256 == sha256
                    )
                ).scalar()
                if not users:
                    self.blob(domain, sha256).unlink(missing_ok=True)
        except Exception:  # noqa: S110 - a leftover blob wastes space; the upload itself succeeded
            pass

    # --- reads -----------------------------------------------------------------------------------

    def list_models(self, who: Principal) -> list[dict[str, Any]]:
        def run(session: Session) -> list[dict[str, Any]]:
            rows = session.execute(
                select(ModelRecord).where(ModelRecord.domain_id == who.domain_id).order_by(ModelRecord.name)
            ).scalars()
            self.store.audit.record(session, who.domain, "model.list", who.accessor)
            return [_meta(r) for r in rows]

        return self.store.operation(who, "model.list", "", run)

    def _open_blob(self, domain: str, row: ModelRecord) -> BinaryIO:
        try:
            return open(self.blob(domain, row.sha256), "rb", buffering=0)  # closed by the response stream
        except FileNotFoundError:
            raise Unavailable(
                f"the file of model {row.name!r} is missing from the repository", code="model_missing"
            ) from None

    def for_token(
        self, who: Principal, model_id: str, *, content: bool, if_none_match: str | None = None
    ) -> Download:
        check_id("model", model_id)
        op = "model.download" if content else "model.read"

        def run(session: Session) -> Download:
            row = self._row(session, who.domain_id, model_id)
            if row is None:
                raise NotFound(f"no model {model_id!r}")
            fresh = content and etag_matches(if_none_match, row.sha256)
            handle = self._open_blob(who.domain, row) if content and not fresh else None
            try:
                outcome = "not_modified" if fresh else "ok"
                self.store.audit.record(
                    session, who.domain, op, who.accessor, model=model_id, sha256=row.sha256, outcome=outcome
                )
            except BaseException:
                if handle is not None:
                    handle.close()
                raise
            return Download(_meta(row, full=True), fresh, handle)

        return self.store.operation(who, op, model_id, run)

    def for_device(
        self, proof: DeviceProof, model_id: str, *, content: bool, if_none_match: str | None = None
    ) -> Download:
        op = "model.download" if content else "model.read"

        def decide(session: Session, device: Device, at: float, out: Decision) -> Download:
            row = self._row(session, device.domain_id, model_id)
            if row is None:
                out.reason = "unknown_model"
                return Download({}, False)
            granted, reason = self.requests.first_grant(session, device, key_refs_of(row.key_refs), at)
            if granted is None:
                out.reason = reason
                return Download({}, False)
            out.details.update(sha256=row.sha256, key=granted.key_name, version=granted.key_version)
            fresh = content and etag_matches(if_none_match, row.sha256)
            if fresh:
                out.details["not_modified"] = True
            handle = self._open_blob(proof.domain, row) if content and not fresh else None
            return Download(_meta(row), fresh, handle)

        return self.requests.run(op, proof, decide, details={"model": model_id})


def _write(f: BinaryIO, hasher: Any, data: bytes) -> None:
    hasher.update(data)
    view = memoryview(data)
    while view:
        written = f.write(view)
        if written is None:  # pragma: no cover - only non-blocking files return None
            raise OSError("short write")
        view = view[written:]
