"""The vault's REST API under /v1 (FastAPI; the OpenAPI document is at /v1/openapi.json).

Default deny: every route but health and readiness needs `Authorization: Bearer <token>`, and each
checks the caller's role in its domain. While the barrier is sealed every such route answers 503.
Errors are `{"error": {"code": ..., "message": ...}}` and never echo request bodies (they may hold
wrapped keys). The device key-release route (PSK proof, policy, licence, HPKE-sealed answer) is a
plain Starlette route in this app: it is the hot path, and FastAPI's dependency injection and
validation cost ~110 µs per request (docs/benchmarks.md), so it parses its small body by hand; it is
also answered before the app's middleware and route table (release_fastpath.py).
"""

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from ...service.http import NO_STORE, error_response, read_bounded
from ...service.logs import JsonLog
from ..errors import KeyServiceError, PermissionDenied, Unavailable
from . import metrics
from .admission import ReleaseGate, ReleaseSettings, queue_full_response
from .device_rows import ReleaseDenied
from .devices import DeviceStore
from .group_commit import CommitQueueFull
from .http_common import (
    API_PREFIX,
    DENIED_BODY,
    MAX_RELEASE_BODY,
    READ_AUDIT,
    READ_KEYS,
    WRITE_KEYS,
    BadRelease,
    parse_release,
)
from .release_fastpath import ReleaseFastPath, VaultAPI
from .store import Principal, Store
from .tokens import TokenStore


class CreateKey(BaseModel):
    type: str = "aes256-gcm"


class ConfigKey(BaseModel):
    min_decryption_version: int | None = Field(default=None, ge=1)
    disabled: bool | None = None


class Unwrap(BaseModel):
    key_version: int = Field(ge=1)
    wrapped: str = Field(max_length=1024, description="base64 of the `vault` stanza body")


class CreateDevice(BaseModel):
    groups: list[str] = Field(default_factory=list, max_length=32)


class PutPolicy(BaseModel):
    key: str = Field(max_length=128)
    devices: list[str] = Field(default_factory=list, max_length=32)
    groups: list[str] = Field(default_factory=list, max_length=32)


class CreateLicence(BaseModel):
    policy: str = Field(max_length=128)
    not_after: str | None = Field(default=None, max_length=64, description="ISO 8601, UTC if no zone")
    max_uses: int | None = Field(default=None, ge=0)
    max_devices: int | None = Field(default=None, ge=0)


class CreateToken(BaseModel):
    role: str
    name: str = Field(default="", max_length=128)


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyServiceError("wrapped is not base64", code="invalid_request") from None


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
    app = VaultAPI(
        title="modelseal vault",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )

    @app.exception_handler(KeyServiceError)
    async def _serviceerror_response(_: Request, exc: KeyServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default 422 echoes the offending input; ours names only the field.
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return error_response(400, "invalid_request", f"invalid request field(s): {', '.join(fields)}")

    tokens = TokenStore(store)

    def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
        if store.barrier.sealed:
            raise Unavailable("the vault is sealed", code="sealed")
        scheme, _, token = (authorization or "").partition(" ")
        who = store.authenticate(token.strip() if scheme.lower() == "bearer" else None)
        request.scope[metrics.PRINCIPAL] = who  # the request log names the domain and accessor
        tokens.touch(who)
        return who

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
            return error_response(503, "sealed", "the vault is sealed")
        try:
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return error_response(503, "storage_unavailable", "the database is not reachable")
        return JSONResponse({"status": "ready", "sealed": False})

    @app.post(f"{API_PREFIX}/sys/seal")
    def seal(who: Caller) -> dict[str, Any]:
        allow(who, ("admin",), "sys.seal")
        store.record(who, "sys.seal")  # recorded first: sealing forgets the key the audit HMACs need
        store.barrier.seal()
        return {"sealed": True}

    # POST /v1/sys/unseal (Shamir shares), GET /v1/sys/seal-status, and the guard that answers 503
    # with Retry-After on every other route while sealed.
    from . import shares_api

    shares_api.add_routes(app, store)

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

    devices = DeviceStore(store)
    # Key releases: in-flight limit (429), group commit and its queue limit (503); see admission.py.
    # `vault serve` closes it after the server stops (app.state.release_gate).
    gate = ReleaseGate(devices, release_settings)
    app.state.release_gate = gate

    @app.post(f"{API_PREFIX}/devices/{{name}}")
    def create_device(
        who: Caller, name: str, response: Response, body: CreateDevice | None = None
    ) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "device.create", name)
        meta, psk = devices.create_device(who, name, (body or CreateDevice()).groups)
        response.headers.update(NO_STORE)
        return {"device": meta, "psk": psk.hex()}

    @app.get(f"{API_PREFIX}/devices")
    def list_devices(who: Caller) -> dict[str, Any]:
        allow(who, READ_KEYS, "device.list")
        return {"devices": devices.list_devices(who)}

    @app.get(f"{API_PREFIX}/devices/{{name}}")
    def read_device(who: Caller, name: str) -> dict[str, Any]:
        allow(who, READ_KEYS, "device.read", name)
        return devices.read_device(who, name)

    @app.post(f"{API_PREFIX}/devices/{{name}}/rotate-psk")
    def rotate_psk(who: Caller, name: str, response: Response) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "device.rotate_psk", name)
        meta, psk = devices.rotate_psk(who, name)
        response.headers.update(NO_STORE)
        return {"device": meta, "psk": psk.hex()}

    @app.post(f"{API_PREFIX}/devices/{{name}}/revoke")
    def revoke_device(who: Caller, name: str) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "device.revoke", name)
        return devices.revoke_device(who, name)

    @app.post(f"{API_PREFIX}/devices/{{name}}/unlock")
    def unlock_device(who: Caller, name: str) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "device.unlock", name)
        return devices.unlock_device(who, name)

    @app.post(f"{API_PREFIX}/policies/{{name}}")
    def put_policy(who: Caller, name: str, body: PutPolicy) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "policy.write", name)
        return devices.put_policy(who, name, body.key, body.devices, body.groups)

    @app.get(f"{API_PREFIX}/policies")
    def list_policies(who: Caller) -> dict[str, Any]:
        allow(who, READ_KEYS, "policy.list")
        return {"policies": devices.list_policies(who)}

    @app.get(f"{API_PREFIX}/policies/{{name}}")
    def read_policy(who: Caller, name: str) -> dict[str, Any]:
        allow(who, READ_KEYS, "policy.read", name)
        return devices.read_policy(who, name)

    @app.post(f"{API_PREFIX}/licences/{{name}}")
    def create_licence(who: Caller, name: str, body: CreateLicence) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "licence.create", name)
        return devices.create_licence(
            who,
            name,
            body.policy,
            not_after=body.not_after,
            max_uses=body.max_uses,
            max_devices=body.max_devices,
        )

    @app.get(f"{API_PREFIX}/licences/{{name}}")
    def read_licence(who: Caller, name: str) -> dict[str, Any]:
        allow(who, READ_KEYS, "licence.read", name)
        return devices.read_licence(who, name)

    async def release(request: Request) -> Response:
        # No bearer token: the PSK proof in the body is the device's authentication.
        if store.barrier.sealed:
            return error_response(503, "sealed", "the vault is sealed")
        data = await read_bounded(request, MAX_RELEASE_BODY)
        if data is None:
            return error_response(413, "invalid_request", "the release request is too large")
        try:
            req = parse_release(data)
        except BadRelease as e:
            return error_response(400, "invalid_request", f"invalid request field: {e}")
        try:
            sealed = await gate.release(*devices.releases.release_steps(req))
        except ReleaseDenied:
            return Response(DENIED_BODY, 403, headers=NO_STORE, media_type="application/json")
        except CommitQueueFull as e:
            return queue_full_response(e)
        except Unavailable as e:
            return error_response(503, e.code, e.message)
        except Exception:
            # Storage or audit failure: the transaction rolled back, so nothing was released.
            return error_response(
                503, "release_failed", "the vault could not record the release; nothing was released"
            )
        answer = {
            "key_name": req.key_name,
            "key_version": req.key_version,
            "sealed": base64.b64encode(sealed).decode(),
        }
        return Response(json.dumps(answer), 200, headers=NO_STORE, media_type="application/json")

    # In the route table too: its 405 for other methods, and POSTs while sealed reach the sealed
    # guard through the app's middleware. Unsealed POSTs take the fast path (set at the end).
    guarded_release = gate.guard(release)
    app.add_route(f"{API_PREFIX}/release", guarded_release, methods=["POST"], include_in_schema=False)

    # Imported here: attestation.py reuses this module's release parsing, so a top-level import
    # would be circular.
    from .attestation import add_routes as add_attestation_routes

    add_attestation_routes(app, devices, caller, allow, gate=gate)

    @app.get(f"{API_PREFIX}/audit")
    def audit(
        who: Caller,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        allow(who, READ_AUDIT, "audit.read")
        return {"records": store.audit_records(who, after, limit)}

    # --- model repository and lease checks (device-authenticated requests): their own modules ---
    from . import leases, repository

    leases.add_routes(app, store, devices)
    repository.add_routes(
        app,
        store,
        devices,
        caller=caller,
        allow=allow,
        models_dir=models_dir,
        max_size=max_model_size or repository.DEFAULT_MAX_MODEL_SIZE,
    )

    # --- tokens (list, revoke), master-key export, metrics + request log: their own modules ---
    from . import export_api
    from . import tokens as token_routes

    token_routes.add_routes(app, tokens, caller, allow)
    export_api.add_routes(app, store, caller, allow, enabled=allow_export)
    # Last: its middleware is then the outermost, so it also counts what the guards refuse.
    record = metrics.install(app, store, public=metrics_public, log=log, on_auth=tokens.touch)
    app.release_fastpath = ReleaseFastPath(guarded_release, store.barrier, record)

    return app
