"""The vault's REST API under /v1 (FastAPI; the OpenAPI document is at /v1/openapi.json).

Default deny: every route but health and readiness needs `Authorization: Bearer <token>`, and each
checks the caller's role in its domain. While the barrier is sealed every such route answers 503.
Errors are `{"error": {"code": ..., "message": ...}}` and never echo request bodies (they may hold
wrapped keys). The device key-release route (PSK proof, policy, HPKE-sealed answer) is a later
increment; it will be a plain Starlette route in this app, off FastAPI's per-request overhead.
"""

import base64
import binascii
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from .errors import KeyServiceError, PermissionDenied, Unavailable
from .store import Principal, Store

API_PREFIX = "/v1"
# Who may do what, per domain. Unwrap is admin/operator only until device key release exists.
WRITE_KEYS = ("admin", "operator")
READ_KEYS = ("admin", "operator", "auditor")
READ_AUDIT = ("admin", "auditor")
NO_STORE = {"Cache-Control": "no-store"}


class CreateKey(BaseModel):
    type: str = "aes256-gcm"


class ConfigKey(BaseModel):
    min_decryption_version: int | None = Field(default=None, ge=1)
    disabled: bool | None = None


class Unwrap(BaseModel):
    key_version: int = Field(ge=1)
    wrapped: str = Field(max_length=1024, description="base64 of the `vault` stanza body")


class CreateToken(BaseModel):
    role: str
    name: str = Field(default="", max_length=128)


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyServiceError("wrapped is not base64", code="invalid_request") from None


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=NO_STORE)


def create_app(store: Store) -> FastAPI:
    app = FastAPI(
        title="modelseal vault",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )

    @app.exception_handler(KeyServiceError)
    async def _service_error(_: Request, exc: KeyServiceError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default 422 echoes the offending input; ours names only the field.
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return _error(400, "invalid_request", f"invalid request field(s): {', '.join(fields)}")

    def caller(authorization: Annotated[str | None, Header()] = None) -> Principal:
        if store.barrier.sealed:
            raise Unavailable("the vault is sealed", code="sealed")
        scheme, _, token = (authorization or "").partition(" ")
        return store.authenticate(token.strip() if scheme.lower() == "bearer" else None)

    Caller = Annotated[Principal, Depends(caller)]

    def allow(who: Principal, roles: tuple[str, ...], op: str, target: str = "") -> None:
        if who.role not in roles:
            error = PermissionDenied(f"role {who.role} may not {op.replace('.', ' ')}")
            store.record_refusal(who, op, target, error)
            raise error

    @app.get(f"{API_PREFIX}/sys/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(f"{API_PREFIX}/sys/ready")
    def ready() -> JSONResponse:
        if store.barrier.sealed:
            return _error(503, "sealed", "the vault is sealed")
        try:
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return _error(503, "storage_unavailable", "the database is not reachable")
        return JSONResponse({"status": "ready", "sealed": False})

    @app.post(f"{API_PREFIX}/sys/seal")
    def seal(who: Caller) -> dict[str, Any]:
        allow(who, ("admin",), "sys.seal")
        store.record(who, "sys.seal")  # recorded first: sealing forgets the key the audit HMACs need
        store.barrier.seal()
        return {"sealed": True}

    @app.get(f"{API_PREFIX}/keys")
    def list_keys(who: Caller) -> dict[str, Any]:
        allow(who, READ_KEYS, "key.list")
        return {"keys": store.list_keys(who)}

    @app.post(f"{API_PREFIX}/keys/{{name}}")
    def create_key(who: Caller, name: str, body: CreateKey | None = None) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "key.create", name)
        return store.create_key(who, name, (body or CreateKey()).type).as_dict()

    @app.get(f"{API_PREFIX}/keys/{{name}}")
    def read_key(who: Caller, name: str) -> dict[str, Any]:
        allow(who, READ_KEYS, "key.read", name)
        return store.read_key(who, name).as_dict()

    @app.post(f"{API_PREFIX}/keys/{{name}}/rotate")
    def rotate_key(who: Caller, name: str) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "key.rotate", name)
        return store.rotate_key(who, name).as_dict()

    @app.post(f"{API_PREFIX}/keys/{{name}}/config")
    def config_key(who: Caller, name: str, body: ConfigKey) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "key.config", name)
        info = store.config_key(
            who, name, min_decryption_version=body.min_decryption_version, disabled=body.disabled
        )
        return info.as_dict()

    @app.post(f"{API_PREFIX}/keys/{{name}}/datakey")
    def datakey(
        who: Caller, name: str, response: Response, plaintext: Annotated[bool, Query()] = False
    ) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "key.datakey", name)
        key = store.datakey(who, name, plaintext=plaintext)
        response.headers.update(NO_STORE)
        out: dict[str, Any] = {
            "key_name": key.key_name,
            "key_version": key.key_version,
            "wrapped": base64.b64encode(key.wrapped).decode(),
        }
        if plaintext:
            out["plaintext"] = base64.b64encode(key.plaintext).decode()
        return out

    @app.post(f"{API_PREFIX}/keys/{{name}}/unwrap")
    def unwrap(who: Caller, name: str, body: Unwrap, response: Response) -> dict[str, Any]:
        # Operator-side unwrap only. Devices will get keys through key release (PSK proof, policy,
        # licence, HPKE-sealed answer), never through this route.
        allow(who, WRITE_KEYS, "key.unwrap", name)
        mek = store.unwrap(who, name, body.key_version, _b64decode(body.wrapped))
        response.headers.update(NO_STORE)
        return {
            "key_name": name,
            "key_version": body.key_version,
            "plaintext": base64.b64encode(mek).decode(),
        }

    @app.post(f"{API_PREFIX}/tokens")
    def create_token(who: Caller, body: CreateToken, response: Response) -> dict[str, Any]:
        allow(who, ("admin",), "token.create", body.role)
        token, accessor = store.create_token(who, body.role, body.name)
        response.headers.update(NO_STORE)
        return {"token": token, "accessor": accessor, "role": body.role, "domain": who.domain}

    @app.get(f"{API_PREFIX}/audit")
    def audit(
        who: Caller,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        allow(who, READ_AUDIT, "audit.read")
        return {"records": store.audit_records(who, after, limit)}

    return app
