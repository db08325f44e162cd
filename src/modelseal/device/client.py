"""The host side of the card: ask for reports, stream sealed models, run inference, reset.

The host is untrusted, and this module is written so that it cannot be otherwise: it never parses a
sealed model, never loads a key that opens one and imports nothing that decrypts. A model is sent
as the exact bytes of its file, read in chunks; only the card can open them. A key the vault
released to the card travels the same way: sealed to the card's session key, relayed untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from ..errors import DeviceError, IntegrityError, ModelSealError, NoMatchingIdentityError, UsageError
from ..keyrelease import report_pb2 as report_pb
from . import attestation_pb2 as pb
from . import tensors
from .server import DEFAULT_PORT, MAX_MESSAGE, SERVICE

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

CHUNK = 1 << 20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    type: str
    shape: tuple[str, ...]


@dataclass(frozen=True)
class SealedRelease:
    """A file key the vault released to a card after checking its report (see modelseal.vault).

    ``sealed`` is HPKE-sealed to the card's session key; the other fields are what the card needs
    to rebuild the HPKE info, so it opens only for this device, key, version and nonce.
    """

    sealed: bytes
    domain: str
    device: str
    key_name: str
    key_version: int
    nonce: bytes

    def to_message(self) -> pb.VaultRelease:
        return pb.VaultRelease(
            sealed=self.sealed,
            domain=self.domain,
            device=self.device,
            key_name=self.key_name,
            key_version=self.key_version,
            nonce=self.nonce,
        )


@dataclass(frozen=True)
class LoadedModel:
    """A model the card has opened: its handle is valid until the card's next reset."""

    handle: str
    session_counter: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _specs(infos: Iterable[pb.TensorInfo]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(i.name, i.type, tuple(i.shape)) for i in infos)


class DeviceClient:
    """One card at ``host:port`` with id ``device_id``; a context manager that closes its channel."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, device_id: int = 0, *, timeout: float = 300.0
    ) -> None:
        self.host, self.port, self.device_id, self.timeout = host, port, device_id, timeout
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.address = target
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        self._channel = grpc.insecure_channel(target, options=options)

    def _call(self, kind: str, method: str, request_type: Any, response_type: Any, request: Any) -> Any:
        factory = getattr(self._channel, kind)
        stub = factory(
            f"/{SERVICE}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return stub(request, timeout=self.timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, e: Any) -> ModelSealError:
        code, details = e.code(), (e.details() or "").splitlines()
        reason = details[0] if details else str(code)
        where = f"device {self.device_id} at {self.address}"
        if code == grpc.StatusCode.UNAVAILABLE:
            return DeviceError(f"cannot reach {where}: is `modelseal device serve` running there?")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeviceError(f"{where} did not answer within {self.timeout:.0f} s")
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return NoMatchingIdentityError(f"{where}: {reason}")
        if code == grpc.StatusCode.DATA_LOSS:
            return IntegrityError(f"{where}: {reason}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return UsageError(f"{where}: {reason}")
        return DeviceError(f"{where}: {reason}")

    def attestation_report(self, request: bytes) -> bytes:
        """The card's signed report over ``request``, as bytes (what report.dat holds)."""
        message = pb.AttestationRequest(device_id=self.device_id, request=request)
        report = self._call(
            "unary_unary", "GetAttestationReport", pb.AttestationRequest, report_pb.AttestationReport, message
        )
        data: bytes = report.SerializeToString()
        return data

    def load(self, sealed: str | os.PathLike[str], release: SealedRelease | None = None) -> LoadedModel:
        """Stream the sealed file's bytes, unchanged, to the card (with a vault release, if given)."""
        path = Path(sealed)
        try:
            f = path.open("rb")
        except OSError as e:
            raise UsageError(f"cannot open {path}: {e.strerror}") from None
        with f:
            return self.load_stream(iter(lambda: f.read(CHUNK), b""), release)

    def load_stream(self, chunks: Iterable[bytes], release: SealedRelease | None = None) -> LoadedModel:
        def messages() -> Iterator[pb.ModelChunk]:
            first = release.to_message() if release is not None else None
            for data in chunks:
                if first is not None:
                    yield pb.ModelChunk(device_id=self.device_id, data=data, release=first)
                    first = None
                else:
                    yield pb.ModelChunk(device_id=self.device_id, data=data)

        response = self._call("stream_unary", "LoadModel", pb.ModelChunk, pb.LoadModelResponse, messages())
        return LoadedModel(
            response.handle, response.session_counter, _specs(response.inputs), _specs(response.outputs)
        )

    def run(self, handle: str, inputs: Mapping[str, npt.ArrayLike]) -> dict[str, np.ndarray[Any, Any]]:
        request = pb.RunRequest(
            device_id=self.device_id, handle=handle, inputs=[tensors.encode(n, v) for n, v in inputs.items()]
        )
        response = self._call("unary_unary", "Run", pb.RunRequest, pb.RunResponse, request)
        return {t.name: tensors.decode(t) for t in response.outputs}

    def reset(self) -> int:
        """Reset the card: new session key; returns the new session counter."""
        message = pb.ResetRequest(device_id=self.device_id)
        response = self._call("unary_unary", "Reset", pb.ResetRequest, pb.ResetResponse, message)
        counter: int = response.session_counter
        return counter

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def attest(
    host: str, port: int = DEFAULT_PORT, device_id: int = 0, request: bytes = b"", *, timeout: float = 60.0
) -> bytes:
    """One report from one card (the seed's QAicRemoteAttestationClient.py, as a function)."""
    with DeviceClient(host, port, device_id, timeout=timeout) as client:
        return client.attestation_report(request)
