"""Devices under /v1/devices: create (the PSK answered once), list, read, rotate the PSK, revoke, unlock."""

# No `from __future__ import annotations`: FastAPI must evaluate the routes' annotations, which
# name the local `Caller`.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Response
from pydantic import BaseModel, Field

from ...service.http import NO_STORE
from .callers import Principal
from .devices import DeviceStore
from .http_common import API_PREFIX, READ_KEYS, WRITE_KEYS, Allow


class CreateDevice(BaseModel):
    groups: list[str] = Field(default_factory=list, max_length=32)


def add_routes(app: FastAPI, devices: DeviceStore, caller: Callable[..., Principal], allow: Allow) -> None:
    Caller = Annotated[Principal, Depends(caller)]

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
