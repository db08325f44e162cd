"""POST /v1/keys/{name}/export: a master key's versions HPKE-sealed to a guard (see export.py).

Refused with 403 ``export_disabled`` unless the server runs with `--allow-export`; admin only; the
refusal and the export are both audited, the export with the guard key's fingerprint.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route's annotations, which
# name the local `caller`.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Response
from pydantic import BaseModel, Field

from ..errors import PermissionDenied
from .callers import Principal
from .export import EXPORT_ROLES, MAX_RECIPIENT_TEXT, export_key, parse_guard
from .store import Store


class ExportRequest(BaseModel):
    guard_public: str = Field(max_length=MAX_RECIPIENT_TEXT, description="ms-x25519:... recipient")


def add_routes(
    app: FastAPI,
    store: Store,
    caller: Callable[..., Principal],
    allow: Callable[[Principal, tuple[str, ...], str, str], None],
    *,
    enabled: bool,
) -> None:
    @app.post("/v1/keys/{name}/export")
    def export(
        who: Annotated[Principal, Depends(caller)], name: str, body: ExportRequest, response: Response
    ) -> dict[str, Any]:
        allow(who, EXPORT_ROLES, "key.export", name)
        if not enabled:
            error = PermissionDenied(
                "export disabled: the vault must be started with `vault serve --allow-export`",
                code="export_disabled",
            )
            store.record_refusal(who, "key.export", name, error)
            raise error
        guard = parse_guard(body.guard_public)
        response.headers["Cache-Control"] = "no-store"
        return export_key(store, who, name, guard)
