"""System routes: health, readiness, sealing the vault (admin), Shamir unsealing, and the audit trail."""

# No `from __future__ import annotations`: FastAPI must evaluate the routes' annotations, which
# name the local `Caller`.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import JSONResponse

from ...service.http import error_response
from ..errors import KeyServiceError
from . import shares_api
from .audit import verify_audit
from .callers import Principal
from .http_common import API_PREFIX, READ_AUDIT, Allow
from .store import Store


def add_routes(app: FastAPI, store: Store, caller: Callable[..., Principal], allow: Allow) -> None:
    Caller = Annotated[Principal, Depends(caller)]

    @app.get(f"{API_PREFIX}/sys/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(f"{API_PREFIX}/sys/ready")
    def ready() -> JSONResponse:
        """200 only if a write could commit now: unsealed, the database files still the ones the
        vault opened, the write lock obtainable, and room on the disk."""
        if store.barrier.sealed:
            return error_response(503, "sealed", "the vault is sealed")
        try:
            store.check_writable()
        except KeyServiceError as e:
            return error_response(503, e.code, e.message)
        return JSONResponse({"status": "ready", "sealed": False})

    @app.post(f"{API_PREFIX}/sys/seal")
    def seal(who: Caller) -> dict[str, Any]:
        allow(who, ("admin",), "sys.seal")
        store.record(who, "sys.seal")  # recorded first: sealing forgets the key the audit HMACs need
        store.barrier.seal()
        return {"sealed": True}

    # POST /v1/sys/unseal (Shamir shares), GET /v1/sys/seal-status, and the guard that answers 503
    # with Retry-After on every other route while sealed.
    shares_api.add_routes(app, store)

    @app.get(f"{API_PREFIX}/audit/verify")
    def verify(who: Caller) -> dict[str, Any]:
        """The whole chain checked, and the anchored head still in it (`vault audit verify`, live)."""
        allow(who, READ_AUDIT, "audit.verify")
        records = verify_audit(store.engine)
        head = store.audit.check_anchor(store.engine)
        return {"records": records, "anchored": None if head is None else head.seq}

    @app.get(f"{API_PREFIX}/audit")
    def audit(
        who: Caller,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        allow(who, READ_AUDIT, "audit.read")
        return {"records": store.audit_records(who, after, limit)}
