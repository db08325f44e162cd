"""A small synchronous client of the vault API (httpx), used by the CLI and the vault recipient.

The token travels only in the Authorization header; it is never part of a URL, a log line or an
error message. Errors come back as the same KeyServiceError subclasses the server raised.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import KeyFileError, UsageError
from .errors import KeyServiceError, NotFound, PermissionDenied, Unavailable

ENV_ADDR = "MODELSEAL_VAULT_ADDR"
ENV_TOKEN_FILE = "MODELSEAL_VAULT_TOKEN_FILE"  # noqa: S105 - a name, not a secret
ENV_CA = "MODELSEAL_VAULT_CA"


def read_token_file(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read(4096).split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise KeyFileError(f"cannot read vault token file {path}: {reason}") from None
    if not token:
        raise KeyFileError(f"vault token file {path} is empty")
    return token


def _error(response: httpx.Response) -> KeyServiceError:
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status_code}"
    cls: type[KeyServiceError] = {
        401: PermissionDenied,
        403: PermissionDenied,
        404: NotFound,
        503: Unavailable,
    }.get(response.status_code, KeyServiceError)
    return cls(f"vault: {message}", code=code, status=response.status_code)


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise KeyServiceError("vault: the answer holds malformed base64") from None


class VaultClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        ca: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            if not Path(ca).is_file():
                raise KeyFileError(f"vault CA file {ca} does not exist")
            verify = ssl.create_default_context(cafile=str(ca))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, verify=verify, timeout=timeout)

    @classmethod
    def from_settings(
        cls, url: str | None, token_file: str | None, ca: str | None, *, token_required: bool = True
    ) -> VaultClient:
        """Flags first, then MODELSEAL_VAULT_ADDR / _TOKEN_FILE / _CA."""
        url = url or os.environ.get(ENV_ADDR)
        token_file = token_file or os.environ.get(ENV_TOKEN_FILE)
        ca = ca or os.environ.get(ENV_CA)
        if not url:
            raise UsageError(f"no vault address: give --vault URL or set {ENV_ADDR}")
        if token_required and not token_file:
            raise UsageError(f"no vault token: give --token-file F or set {ENV_TOKEN_FILE}")
        return cls(url, read_token_file(token_file) if token_file else None, ca=ca)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, f"/v1{path}", **kwargs)
        except httpx.HTTPError as e:
            # httpx messages name the host and the failure, never headers.
            raise Unavailable(f"cannot reach the vault at {self.url}: {e}") from None
        if response.status_code >= 400:
            raise _error(response)
        data = response.json()
        if not isinstance(data, dict):
            raise KeyServiceError("vault: unexpected answer")
        return data

    @staticmethod
    def _key(name: str) -> str:
        return "/keys/" + quote(name, safe="")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/sys/health")

    def ready(self) -> dict[str, Any]:
        return self._call("GET", "/sys/ready")

    def seal_vault(self) -> dict[str, Any]:
        return self._call("POST", "/sys/seal")

    def create_key(self, name: str, key_type: str = "aes256-gcm") -> dict[str, Any]:
        return self._call("POST", self._key(name), json={"type": key_type})

    def list_keys(self) -> list[str]:
        return [str(k) for k in self._call("GET", "/keys")["keys"]]

    def read_key(self, name: str) -> dict[str, Any]:
        return self._call("GET", self._key(name))

    def rotate_key(self, name: str) -> dict[str, Any]:
        return self._call("POST", self._key(name) + "/rotate")

    def config_key(
        self, name: str, *, min_decryption_version: int | None = None, disabled: bool | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if min_decryption_version is not None:
            body["min_decryption_version"] = min_decryption_version
        if disabled is not None:
            body["disabled"] = disabled
        return self._call("POST", self._key(name) + "/config", json=body)

    def datakey(self, name: str, *, plaintext: bool = False) -> DataKeyAnswer:
        data = self._call("POST", self._key(name) + "/datakey", params={"plaintext": str(plaintext).lower()})
        return DataKeyAnswer(
            str(data["key_name"]),
            int(data["key_version"]),
            _b64(data["wrapped"]),
            _b64(data["plaintext"]) if plaintext else None,
        )

    def unwrap(self, name: str, version: int, wrapped: bytes) -> bytes:
        data = self._call(
            "POST",
            self._key(name) + "/unwrap",
            json={"key_version": version, "wrapped": base64.b64encode(wrapped).decode()},
        )
        return _b64(data["plaintext"])

    @staticmethod
    def _named(kind: str, name: str) -> str:
        return f"/{kind}/" + quote(name, safe="")

    def create_device(self, name: str, groups: list[str] | None = None) -> tuple[dict[str, Any], bytes]:
        """A new device and its PSK (shown this once): (metadata, 32-byte PSK)."""
        data = self._call("POST", self._named("devices", name), json={"groups": groups or []})
        return dict(data["device"]), _psk(data)

    def rotate_psk(self, name: str) -> tuple[dict[str, Any], bytes]:
        data = self._call("POST", self._named("devices", name) + "/rotate-psk")
        return dict(data["device"]), _psk(data)

    def revoke_device(self, name: str) -> dict[str, Any]:
        return self._call("POST", self._named("devices", name) + "/revoke")

    def unlock_device(self, name: str) -> dict[str, Any]:
        return self._call("POST", self._named("devices", name) + "/unlock")

    def list_devices(self) -> list[str]:
        return [str(d) for d in self._call("GET", "/devices")["devices"]]

    def read_device(self, name: str) -> dict[str, Any]:
        return self._call("GET", self._named("devices", name))

    def put_policy(
        self, name: str, key: str, *, devices: list[str] | None = None, groups: list[str] | None = None
    ) -> dict[str, Any]:
        body = {"key": key, "devices": devices or [], "groups": groups or []}
        return self._call("POST", self._named("policies", name), json=body)

    def list_policies(self) -> list[str]:
        return [str(p) for p in self._call("GET", "/policies")["policies"]]

    def read_policy(self, name: str) -> dict[str, Any]:
        return self._call("GET", self._named("policies", name))

    def create_licence(
        self,
        name: str,
        policy: str,
        *,
        not_after: str | None = None,
        max_uses: int | None = None,
        max_devices: int | None = None,
    ) -> dict[str, Any]:
        body = {"policy": policy, "not_after": not_after, "max_uses": max_uses, "max_devices": max_devices}
        return self._call("POST", self._named("licences", name), json=body)

    def read_licence(self, name: str) -> dict[str, Any]:
        return self._call("GET", self._named("licences", name))

    def release(self, request: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/release (no token needed: the request carries the device's PSK proof)."""
        return self._call("POST", "/release", json=request)

    def create_token(self, role: str, name: str = "") -> dict[str, Any]:
        return self._call("POST", "/tokens", json={"role": role, "name": name})

    def audit(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        records = self._call("GET", "/audit", params={"after": after, "limit": limit})["records"]
        return [dict(r) for r in records]


def _psk(data: dict[str, Any]) -> bytes:
    try:
        psk = bytes.fromhex(str(data["psk"]))
    except (KeyError, ValueError):
        raise KeyServiceError("vault: the answer holds no valid PSK") from None
    if len(psk) != 32:
        raise KeyServiceError("vault: the answer holds no valid PSK")
    return psk


class DataKeyAnswer:
    """A data key from the vault; ``plaintext`` only when asked for (and never in repr)."""

    __slots__ = ("key_name", "key_version", "plaintext", "wrapped")

    def __init__(self, key_name: str, key_version: int, wrapped: bytes, plaintext: bytes | None) -> None:
        self.key_name = key_name
        self.key_version = key_version
        self.wrapped = wrapped
        self.plaintext = plaintext

    def __repr__(self) -> str:
        return f"DataKeyAnswer(key_name={self.key_name!r}, key_version={self.key_version})"
