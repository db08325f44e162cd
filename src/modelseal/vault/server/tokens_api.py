"""Routes of /v1/tokens: create (admin), list, revoke."""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Response
from pydantic import BaseModel, Field

from ...service.http import NO_STORE
from .callers import Principal
from .http_common import API_PREFIX
from .tokens import LIST_ROLES, TokenStore, check_accessor


class CreateToken(BaseModel):
    role: str
    name: str = Field(default="", max_length=128)


def add_routes(
    app: FastAPI,
    tokens: TokenStore,
    caller: Callable[..., Principal],
    allow: Callable[[Principal, tuple[str, ...], str, str], None],
) -> None:
    Caller = Annotated[Principal, Depends(caller)]

    @app.post(f"{API_PREFIX}/tokens")
    def create_token(who: Caller, body: CreateToken, response: Response) -> dict[str, Any]:
        allow(who, ("admin",), "token.create", body.role)
        token, accessor = tokens.store.create_token(who, body.role, body.name)
        response.headers.update(NO_STORE)
        return {"token": token, "accessor": accessor, "role": body.role, "domain": who.domain}

    @app.get(f"{API_PREFIX}/tokens")
    def list_tokens(who: Caller) -> dict[str, Any]:
        allow(who, LIST_ROLES, "token.list", "")
        return {"tokens": tokens.list_tokens(who)}

    @app.post(f"{API_PREFIX}/tokens/{{accessor}}/revoke")
    def revoke_token(who: Caller, accessor: str) -> dict[str, Any]:
        check_accessor(accessor)  # before allow(): a refusal's audit record names its target
        allow(who, ("admin",), "token.revoke", accessor)
        return tokens.revoke(who, accessor)
