"""A small synchronous client of the vault API (httpx), used by the CLI and the vault recipient.

The token travels only in the Authorization header; it is never part of a URL, a log line or an
error message. Errors come back as the same KeyServiceError subclasses the server raised.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from ...errors import IntegrityError, KeyFileError, UsageError
from ...fileio import atomic_output
from ..errors import KeyServiceError, NotFound, PermissionDenied, Unavailable

ENV_ADDR = "MODELSEAL_VAULT_ADDR"
ENV_TOKEN_FILE = "MODELSEAL_VAULT_TOKEN_FILE"  # noqa: S105 - a name, not a secret
ENV_CA = "MODELSEAL_VAULT_CA"
# A client certificate for a vault that asks for one (`vault serve --client-ca`): PEM files.
ENV_CLIENT_CERT = "MODELSEAL_VAULT_CLIENT_CERT"
ENV_CLIENT_KEY = "MODELSEAL_VAULT_CLIENT_KEY"
# `unix:/run/modelseal/agent.sock`: the edge agent on a unix socket instead of an https URL.
UNIX_PREFIX = "unix:"


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
        # 429/503: the vault is over capacity or sealed; 502/504: an agent or gateway between
        # could not reach it. All mean "not now", not "no".
        429: Unavailable,
        502: Unavailable,
        503: Unavailable,
        504: Unavailable,
    }.get(response.status_code, KeyServiceError)
    return cls(f"vault: {message}", code=code, status=response.status_code)


def _untrusted_certificate(error: BaseException) -> bool:
    """The TLS handshake failed on the server's certificate (somewhere in the exception's chain)."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None or isinstance(seen, ssl.SSLCertVerificationError) or "VERIFY_FAILED" in str(seen):
            return seen is not None
        seen = seen.__cause__ or seen.__context__
    return False


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
        client_cert: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        insecure_http: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self._trust = f"the CA in {ca}" if ca is not None else "the system's CAs"
        if token and self.url.lower().startswith("http://") and not insecure_http:
            raise UsageError(
                "refusing to send a vault token over plain http:// (anyone on the path could read and "
                "reuse it): use https:// (`modelseal vault` commands take --insecure-http for a test "
                "vault on this machine)"
            )
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            if not Path(ca).is_file():
                raise KeyFileError(f"vault CA file {ca} does not exist")
            verify = ssl.create_default_context(cafile=str(ca))
        if client_cert is not None:
            # For a vault served with --client-ca: (certificate PEM, key PEM) presented in the handshake.
            context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
            try:
                context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
            except (ssl.SSLError, OSError):
                raise KeyFileError(f"cannot load the vault client certificate {client_cert[0]}") from None
            verify = context
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base_url, transport = self.url, None
        if self.url.startswith(UNIX_PREFIX):
            # An edge agent on a unix socket: plain HTTP is enough, the socket's file mode is the
            # access control and what travels is MAC'd and HPKE-sealed end to end.
            socket_path = self.url[len(UNIX_PREFIX) :]
            if not socket_path:
                raise UsageError(f"give the socket path: {UNIX_PREFIX}/run/modelseal/agent.sock")
            base_url, transport = "http://modelseal-agent", httpx.HTTPTransport(uds=socket_path)
        self._http = httpx.Client(
            base_url=base_url, headers=headers, verify=verify, timeout=timeout, transport=transport
        )

    @classmethod
    def from_settings(
        cls,
        url: str | None,
        token_file: str | None,
        ca: str | None,
        *,
        token_required: bool = True,
        insecure_http: bool = False,
    ) -> VaultClient:
        """Flags first, then MODELSEAL_VAULT_ADDR / _TOKEN_FILE / _CA (/ _CLIENT_CERT + _CLIENT_KEY)."""
        url = url or os.environ.get(ENV_ADDR)
        token_file = token_file or os.environ.get(ENV_TOKEN_FILE)
        ca = ca or os.environ.get(ENV_CA)
        if not url:
            raise UsageError(f"no vault address: give --vault URL or set {ENV_ADDR}")
        if token_required and not token_file:
            raise UsageError(f"no vault token: give --token-file F or set {ENV_TOKEN_FILE}")
        cert, key = os.environ.get(ENV_CLIENT_CERT), os.environ.get(ENV_CLIENT_KEY)
        if bool(cert) != bool(key):
            raise UsageError(f"set both {ENV_CLIENT_CERT} and {ENV_CLIENT_KEY}, or neither")
        return cls(
            url,
            read_token_file(token_file) if token_file else None,
            ca=ca,
            client_cert=(cert, key) if cert and key else None,
            insecure_http=insecure_http,
        )

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
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            if _untrusted_certificate(e):
                raise Unavailable(
                    f"the vault at {self.url} answered, but its certificate is not trusted by {self._trust}: "
                    "give the vault's CA with --ca or MODELSEAL_VAULT_CA (DIR/tls/ca.pem of `vault init`)",
                    code="untrusted_certificate",
                ) from None
            # Never sent: resending (with a fresh nonce) cannot act twice.
            raise Unavailable(f"cannot reach the vault at {self.url}: {e}", code="unreachable") from None
        except httpx.HTTPError as e:
            # httpx messages name the host and the failure, never headers.
            failed = f"cannot reach the vault at {self.url}: {e}"
            raise Unavailable(failed, code="connection_failed") from None
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

    def unseal(self, share: str) -> dict[str, Any]:
        """POST /v1/sys/unseal with one Shamir share (no token needed); answers the progress."""
        return self._call("POST", "/sys/unseal", json={"share": share})

    def seal_status(self) -> dict[str, Any]:
        return self._call("GET", "/sys/seal-status")

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

    def enroll_device(self, name: str, public_key: bytes, measurement: bytes | None = None) -> dict[str, Any]:
        """Enrol a device's Ed25519 identity public key (raw 32 bytes) and expected measurement."""
        body = {
            "public_key": base64.b64encode(public_key).decode(),
            "measurement": measurement.hex() if measurement is not None else None,
        }
        return self._call("POST", self._named("devices", name) + "/identity", json=body)

    def attest_challenge(self, device: str, *, domain: str = "default") -> bytes:
        """POST /v1/attest/challenge (no token): a fresh single-use nonce for the device's card."""
        data = self._call("POST", "/attest/challenge", json={"domain": domain, "device": device})
        nonce = _b64(data.get("nonce"))
        if len(nonce) != 32:
            raise KeyServiceError("vault: the challenge holds no valid nonce")
        return nonce

    def attest_release(
        self,
        device: str,
        report: bytes,
        key_name: str,
        key_version: int,
        wrapped: bytes,
        nonce: bytes,
        *,
        domain: str = "default",
    ) -> bytes:
        """POST /v1/attest/release (no token): the file key HPKE-sealed to the report's session key.
        ``nonce`` is the vault's challenge the report was made over."""
        b64 = base64.b64encode
        body = {
            "domain": domain,
            "device": device,
            "report": b64(report).decode(),
            "key_name": key_name,
            "key_version": key_version,
            "wrapped": b64(wrapped).decode(),
            "nonce": b64(nonce).decode(),
        }
        return _b64(self._call("POST", "/attest/release", json=body).get("sealed"))

    def create_token(self, role: str, name: str = "") -> dict[str, Any]:
        return self._call("POST", "/tokens", json={"role": role, "name": name})

    def list_tokens(self) -> list[dict[str, Any]]:
        """Metadata of the domain's tokens (accessor, role, name, created, last_used, revoked)."""
        return [dict(t) for t in self._call("GET", "/tokens")["tokens"]]

    def revoke_token(self, accessor: str) -> dict[str, Any]:
        return self._call("POST", "/tokens/" + quote(accessor, safe="") + "/revoke")

    def export_key(self, name: str, guard_public: str) -> dict[str, Any]:
        """Every version of a master key HPKE-sealed to ``guard_public`` (an ms-x25519: string);
        open it with modelseal.vault.server.export.open_bundle and the guard's identity."""
        return self._call("POST", self._key(name) + "/export", json={"guard_public": guard_public})

    def audit(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        records = self._call("GET", "/audit", params={"after": after, "limit": limit})["records"]
        return [dict(r) for r in records]

    def verify_audit(self) -> dict[str, Any]:
        """The running vault checks its whole chain and anchor: ``{"records": n, "anchored": seq}``;
        a broken chain raises KeyServiceError (code ``audit_chain_broken``)."""
        return dict(self._call("GET", "/audit/verify"))

    # --- lease checks and the model repository ----------------------------------------------------
    # ``headers`` are a device's five X-Modelseal-* headers (wire.device_headers) for exactly
    # this request: method, path ("/v1/..." as sent) and body bytes are what they MAC.

    def lease(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """POST /v1/lease: ``body`` must be the very JSON bytes ``headers`` were computed over.

        Answers ``{"valid": true, "key_name", "key_version", "not_after", "recheck_after"}`` (and
        ``"model"`` when asked about one); any refusal raises PermissionDenied (release_denied).
        """
        sent = {**headers, "Content-Type": "application/json"}
        return self._call("POST", "/lease", content=body, headers=sent)

    @staticmethod
    def _model(model_id: str) -> str:
        return "/models/" + quote(model_id, safe="")

    def upload_model(
        self, model_id: str, path: str | os.PathLike[str], *, replace: bool = False
    ) -> dict[str, Any]:
        """PUT a sealed model file, streamed from disk in 1 MiB chunks; returns its metadata."""
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the streamed request
            size = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None

        def chunks() -> Iterator[bytes]:
            while data := f.read(MODEL_CHUNK):
                yield data

        with f:
            return self._call(
                "PUT",
                self._model(model_id),
                params={"replace": "true"} if replace else None,
                content=chunks(),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
                # The vault fsyncs and checks the file before answering: allow it time on big ones.
                timeout=httpx.Timeout(self._http.timeout.connect, read=MODEL_ANSWER_TIMEOUT),
            )

    def list_models(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self._call("GET", "/models")["models"]]

    def model_info(self, model_id: str, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """A model's metadata, with this client's token or a device's ``headers`` (GET)."""
        return self._call("GET", self._model(model_id), headers=headers)

    def download_model(
        self, model_id: str, out_path: str | os.PathLike[str], *, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Stream a model to ``out_path`` atomically; its SHA-256 must equal the vault's ETag.

        With an ``If-None-Match`` header holding that ETag the vault answers 304 and ``out_path`` is
        not touched. Returns ``{"id", "sha256", "size", "not_modified"}``.
        """
        path = f"/v1{self._model(model_id)}/content"
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                if response.status_code >= 400:
                    raise _error(_read_bounded(response))
                sha256 = _etag(response)
                if response.status_code == 304:
                    return {"id": model_id, "sha256": sha256, "size": None, "not_modified": True}
                hasher, size = hashlib.sha256(), 0
                with atomic_output(out_path, overwrite=True) as f:  # a newer copy replaces the cached one
                    for chunk in response.iter_bytes(MODEL_CHUNK):
                        hasher.update(chunk)
                        size += len(chunk)
                        f.write(chunk)
                    if not hmac.compare_digest(hasher.hexdigest(), sha256):
                        raise IntegrityError(
                            f"integrity check failed: model {model_id!r} from the vault does not match "
                            "its SHA-256 (nothing was written)"
                        )
        except httpx.HTTPError as e:
            raise Unavailable(f"cannot download from the vault at {self.url}: {e}") from None
        return {"id": model_id, "sha256": sha256, "size": size, "not_modified": False}


MODEL_CHUNK = 1 << 20
MODEL_ANSWER_TIMEOUT = 600.0
_MAX_ERROR_BODY = 64 << 10


def _read_bounded(response: httpx.Response) -> httpx.Response:
    """An error answer of a streamed request, read up to 64 KiB (never a whole model)."""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > _MAX_ERROR_BODY:
            break
    return httpx.Response(response.status_code, content=body[:_MAX_ERROR_BODY])


def _etag(response: httpx.Response) -> str:
    tag = str(response.headers.get("etag", "")).removeprefix("W/").strip('"')
    if len(tag) != 64 or any(c not in "0123456789abcdef" for c in tag):
        raise KeyServiceError("vault: the model answer has no valid ETag")
    return tag


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
