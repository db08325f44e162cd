"""Policies (which devices get which key; default deny) and licences (their limits) under /v1."""

# No `from __future__ import annotations`: FastAPI must evaluate the routes' annotations, which
# name the local `Caller`.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from .callers import Principal
from .devices import DeviceStore
from .http_common import API_PREFIX, READ_KEYS, WRITE_KEYS, Allow


class PutPolicy(BaseModel):
    key: str = Field(max_length=128)
    devices: list[str] = Field(default_factory=list, max_length=32)
    groups: list[str] = Field(default_factory=list, max_length=32)


class CreateLicence(BaseModel):
    policy: str = Field(max_length=128)
    not_after: str | None = Field(default=None, max_length=64, description="ISO 8601, UTC if no zone")
    max_uses: int | None = Field(default=None, ge=0)
    max_devices: int | None = Field(default=None, ge=0)


def add_routes(app: FastAPI, devices: DeviceStore, caller: Callable[..., Principal], allow: Allow) -> None:
    Caller = Annotated[Principal, Depends(caller)]

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
