"""Master keys under /v1/keys: create, list, read, rotate, config, data keys and operator unwrap."""

# No `from __future__ import annotations`: FastAPI must evaluate the routes' annotations, which
# name the local `Caller`.
import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Response
from pydantic import BaseModel, Field

from ...service.http import NO_STORE
from ..errors import KeyServiceError
from .callers import Principal
from .http_common import API_PREFIX, READ_KEYS, WRITE_KEYS, Allow
from .store import Store


class CreateKey(BaseModel):
    type: str = "aes256-gcm"


class ConfigKey(BaseModel):
    min_decryption_version: int | None = Field(default=None, ge=1)
    disabled: bool | None = None


class Unwrap(BaseModel):
    key_version: int = Field(ge=1)
    wrapped: str = Field(max_length=1024, description="base64 of the `vault` stanza body")


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyServiceError("wrapped is not base64", code="invalid_request") from None


def add_routes(app: FastAPI, store: Store, caller: Callable[..., Principal], allow: Allow) -> None:
    Caller = Annotated[Principal, Depends(caller)]

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
