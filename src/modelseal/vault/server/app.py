"""The vault's REST API under /v1 (FastAPI; the OpenAPI document is at /v1/openapi.json).

Default deny: every route but health and readiness needs `Authorization: Bearer <token>`, and each
checks the caller's role in its domain. While the barrier is sealed every such route answers 503.
Errors are `{"error": {"code": ..., "message": ...}}` and never echo request bodies (they may hold
wrapped keys). create_app builds the app, its token check (``caller``) and role check (``allow``),
and includes one route module per resource (<resource>_api: sys, keys, tokens, devices, policies,
release (the hot path, a plain Starlette route), attest, leases, models, export); metrics last, as
the outermost middleware.
"""

from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError

from ...service.http import error_response
from ...service.logs import JsonLog
from ..errors import KeyServiceError, PermissionDenied, Unavailable
from . import (
    attest_api,
    devices_api,
    export_api,
    keys_api,
    leases_api,
    metrics,
    models_api,
    policies_api,
    release_api,
    sys_api,
    tokens_api,
)
from .admission import ReleaseGate, ReleaseSettings
from .callers import Principal
from .devices import DeviceStore
from .engine import storage_error
from .http_common import API_PREFIX, internal_error
from .release_fastpath import ReleaseFastPath, VaultApp
from .repository import DEFAULT_MAX_MODEL_SIZE
from .request_limits import RequestLimits
from .store import Store
from .tokens import TokenStore


def create_app(
    store: Store,
    *,
    models_dir: str | None = None,
    max_model_size: int | None = None,
    release_settings: ReleaseSettings | None = None,
    allow_export: bool = False,
    metrics_public: bool = False,
    log: JsonLog | None = None,
) -> FastAPI:
    app = VaultApp(
        title="modelseal vault",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        # No Swagger UI: it loads its script from a CDN, on a page where a token gets typed.
        docs_url=None,
        redoc_url=None,
    )

    _error_handlers(app, log)

    tokens = TokenStore(store)

    def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
        if store.barrier.sealed:
            raise Unavailable("the vault is sealed", code="sealed")
        scheme, _, token = (authorization or "").partition(" ")
        who = store.authenticate(token.strip() if scheme.lower() == "bearer" else None)
        request.scope[metrics.PRINCIPAL] = who  # the request log names the domain and accessor
        tokens.touch(who)
        return who

    def allow(who: Principal, roles: tuple[str, ...], op: str, target: str = "") -> None:
        if who.role not in roles:
            error = PermissionDenied(f"role {who.role} may not {op.replace('.', ' ')}")
            store.record_refusal(who, op, target, error)
            raise error

    # Before any route reads a body: no token, no body; every body bounded (request_limits.py).
    # Added first, so it runs inside the sealed guard (sealed: 503 for everything, as documented).
    app.add_middleware(RequestLimits)
    sys_api.add_routes(app, store, caller, allow)
    keys_api.add_routes(app, store, caller, allow)
    tokens_api.add_routes(app, tokens, caller, allow)
    devices = DeviceStore(store)
    devices_api.add_routes(app, devices, caller, allow)
    policies_api.add_routes(app, devices, caller, allow)
    # Key releases: in-flight limit (429), group commit and its queue limit (503); see admission.py.
    # `vault serve` closes it after the server stops (app.state.release_gate).
    gate = ReleaseGate(devices, release_settings)
    app.state.release_gate = gate
    guarded_release = release_api.add_routes(app, store, devices, gate)
    attest_api.add_routes(app, devices, caller, allow, gate=gate)
    leases_api.add_routes(app, store, devices)
    models_api.add_routes(
        app,
        store,
        devices,
        caller=caller,
        allow=allow,
        models_dir=models_dir,
        max_size=max_model_size or DEFAULT_MAX_MODEL_SIZE,
    )
    export_api.add_routes(app, store, caller, allow, enabled=allow_export)
    # Last: its middleware is then the outermost, so it also counts what the guards refuse.
    record = metrics.install(app, store, public=metrics_public, log=log, on_auth=tokens.touch)
    app.release_fastpath = ReleaseFastPath(guarded_release, store.barrier, record)
    return app


def _error_handlers(app: FastAPI, log: JsonLog | None) -> None:
    """Every error a client sees is the documented body: ours, the database's, anything else."""

    @app.exception_handler(KeyServiceError)
    async def _serviceerror_response(_: Request, exc: KeyServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(DBAPIError)
    async def _storage_error(_: Request, exc: DBAPIError) -> JSONResponse:
        # The driver's first line only: SQLAlchemy's text adds the statement and a link.
        error = storage_error(exc)
        (log or JsonLog()).event("storage_error", level="error", code=error.code, message=error.message)
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> Response:
        # Never a bare 500 or a traceback: the documented shape, the exception's type in the log.
        (log or JsonLog()).event("internal_error", level="error", error=type(exc).__name__)
        return internal_error()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default 422 echoes the offending input; ours names only the field.
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return error_response(400, "invalid_request", f"invalid request field(s): {', '.join(fields)}")
