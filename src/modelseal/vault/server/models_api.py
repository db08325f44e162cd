"""Routes of /v1/models: upload and list (token), info and content (token or device headers)."""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures.
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from ...service.http import NO_STORE, error_response
from ..errors import KeyServiceError, PermissionDenied
from .callers import Principal
from .device_auth import BadDeviceRequest, DeviceRequests, has_device_headers
from .device_auth import parse_device_headers as parse_proof
from .device_rows import ReleaseDenied, check_id
from .devices import DeviceStore
from .http_common import API_PREFIX, denied, request_path
from .repository import (
    CHUNK_SIZE,
    DEFAULT_MAX_MODEL_SIZE,
    READ_MODELS,
    WRITE_MODELS,
    Download,
    ModelRepository,
    TooLarge,
    etag,
)
from .store import Store


def add_routes(
    app: FastAPI,
    store: Store,
    devices: DeviceStore,
    *,
    caller: Callable[..., Principal],
    allow: Callable[..., None],
    models_dir: str | os.PathLike[str] | None,
    max_size: int = DEFAULT_MAX_MODEL_SIZE,
) -> ModelRepository:
    """Register the /v1/models routes; ``caller`` and ``allow`` are the app's token checks."""
    repo = ModelRepository(
        store, DeviceRequests(devices), Path(models_dir) if models_dir is not None else None, max_size
    )
    repo.remove_stale_uploads()
    Caller = Annotated[Principal, Depends(caller)]

    @app.put(f"{API_PREFIX}/models/{{model_id}}")
    async def upload_model(
        who: Caller, model_id: str, request: Request, replace: Annotated[bool, Query()] = False
    ) -> dict[str, Any]:
        # The body is read by hand (no body parameter), so FastAPI never buffers it.
        await run_in_threadpool(allow, who, WRITE_MODELS, "model.upload", model_id)
        check_id("model", model_id)
        if not replace:
            await run_in_threadpool(repo.check_absent, who, model_id)
        try:
            tmp, size, sha256 = await repo.receive(who, request)
        except TooLarge as e:
            await run_in_threadpool(store.record_refusal, who, "model.upload", model_id, e)
            raise
        return await run_in_threadpool(repo.commit, who, model_id, tmp, size, sha256, replace)

    @app.get(f"{API_PREFIX}/models")
    def list_models(who: Caller) -> dict[str, Any]:
        allow(who, READ_MODELS, "model.list")
        return {"models": repo.list_models(who)}

    async def model_info(request: Request) -> Response:
        return await fetch(store, repo, request, content=False)

    async def model_content(request: Request) -> Response:
        return await fetch(store, repo, request, content=True)

    app.add_route(f"{API_PREFIX}/models/{{model_id}}", model_info, methods=["GET"], include_in_schema=False)
    app.add_route(
        f"{API_PREFIX}/models/{{model_id}}/content", model_content, methods=["GET"], include_in_schema=False
    )
    return repo


async def fetch(store: Store, repo: ModelRepository, request: Request, content: bool) -> Response:
    """A model's info or content, for a token (operator tools) or device headers (edge agents): the
    device path answers every refusal with the release's uniform 403."""
    if store.barrier.sealed:
        return error_response(503, "sealed", "the vault is sealed")
    model_id = str(request.path_params["model_id"])
    if_none_match = request.headers.get("if-none-match")
    try:
        check_id("model", model_id)
        if has_device_headers(request.headers):
            try:
                path = request_path(request)
                proof = parse_proof(request.headers, method=request.method, path=path, body=b"")
            except BadDeviceRequest as e:
                return error_response(400, "invalid_request", f"invalid request header: {e}")
            try:
                got = await run_in_threadpool(
                    repo.for_device, proof, model_id, content=content, if_none_match=if_none_match
                )
            except ReleaseDenied:
                return denied()
        else:
            who = await run_in_threadpool(_token_caller, store, request, content, model_id)
            got = await run_in_threadpool(
                repo.for_token, who, model_id, content=content, if_none_match=if_none_match
            )
    except KeyServiceError as e:
        return error_response(e.status, e.code, e.message)
    except Exception:
        return error_response(503, "storage_unavailable", "the vault could not read its model repository")
    return _answer(got, content)


def _token_caller(store: Store, request: Request, content: bool, model_id: str) -> Principal:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    who = store.authenticate(token.strip() if scheme.lower() == "bearer" else None)
    roles, op = (WRITE_MODELS, "model.download") if content else (READ_MODELS, "model.read")
    if who.role not in roles:
        error = PermissionDenied(f"role {who.role} may not {op.replace('.', ' ')}")
        store.record_refusal(who, op, model_id, error)
        raise error
    return who


def _answer(got: Download, content: bool) -> Response:
    if not content:
        return JSONResponse(got.meta, headers=NO_STORE)
    headers = {"ETag": etag(got.meta["sha256"]), "Cache-Control": "no-store"}
    if got.not_modified or got.file is None:
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(os.fstat(got.file.fileno()).st_size)
    return StreamingResponse(stream_file(got.file), headers=headers, media_type="application/octet-stream")


async def stream_file(f: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while True:
            data = await anyio.to_thread.run_sync(f.read, CHUNK_SIZE)
            if not data:
                return
            yield data
    finally:
        f.close()
