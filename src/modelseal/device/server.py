"""The emulated accelerator card: a gRPC server that attests, loads sealed models and runs them.

Trust model (the qaic design): the host that talks to the card is untrusted; only the card ever
holds a file key or plaintext. The card's Ed25519 identity key signs its reports: a key in memory,
or one kept in a PKCS#11 token (``pkcs11_identity.TokenIdentityKey``) that never leaves it. Its X25519
session key is made at start and on every Reset, exists only in this process's memory and is never
exported: a model wrapped to an older session cannot be opened after a reset. Streamed ciphertext
is spooled into an anonymous memfd (nothing is written to disk) and opened with modelseal's
open semantics through the ONNX Runtime loader, which decrypts into memory and zeroizes the
plaintext once ONNX Runtime holds its parsed copy.

The file key comes from an x25519 stanza wrapped to the current session key, or from the vault:
after verifying this card's report, the vault HPKE-seals the key of the model's `vault` stanza to
the report's session key, the host relays that in LoadModel, and only this process can open it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, NoReturn

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import (
    FormatError,
    IntegrityError,
    ListenError,
    ModelSealError,
    NoMatchingIdentityError,
    UsageError,
)
from ..format.header import Stanza
from ..keyrelease import report_pb2 as report_pb
from ..keyrelease import wire
from ..keyrelease.report import IdentityKey, Report, request_digest
from ..recipients import X25519Identity
from ..recipients.x25519 import public_bytes
from . import attestation_pb2 as pb
from . import tensors
from .measurement import software_measurement

DEFAULT_PORT = 62473
SERVICE = pb.DESCRIPTOR.services_by_name["Device"].full_name
MAX_MESSAGE = 64 << 20  # Run tensors; models stream in chunks far below this
MAX_REQUEST = 64 << 10
DEFAULT_MAX_MODEL = 16 << 30
MAX_MODELS = 16  # per session: a host cannot exhaust the card's memory with forgotten handles
NOT_THIS_SESSION = "not wrapped to this device's current session"
Notice = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"modelseal device: {message}", file=sys.stderr, flush=True)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Loaded:
    session: Any  # onnxruntime.InferenceSession
    counter: int


@dataclass
class _State:
    session_key: X25519Identity
    counter: int
    models: dict[str, _Loaded] = field(default_factory=dict)


# enc (32) || AES-256-GCM of a 256-bit file key (32) || tag (16): what the vault's release seals.
RELEASED_KEY_SIZE = 32 + 32 + 16
_VAULT_STANZA = "vault"


class _ReleasedKey:
    """An identity that opens the vault's sealed file key with the session key, inside the card.

    It offers the key only to a model whose `vault` stanza names the released key and version; the
    header MAC then checks it is that model's key. A key sealed to an earlier session (the card was
    reset since) or relabelled by the host does not open, which reads as "not this session".
    """

    def __init__(self, session_key: X25519Identity, release: pb.VaultRelease) -> None:
        self._session_key = session_key
        self._release = release

    def unwrap(self, stanzas: Sequence[Stanza]) -> Iterator[bytes]:
        r = self._release
        wanted = (r.key_name.encode(), str(r.key_version).encode())
        if not any(s.type == _VAULT_STANZA and tuple(s.args) == wanted for s in stanzas):
            return
        info = wire.attest_hpke_info(
            domain=r.domain,
            device=r.device,
            key_name=r.key_name,
            key_version=r.key_version,
            nonce_digest=request_digest(r.nonce),
        )
        try:
            key = wire.SUITE.decrypt(r.sealed, self._session_key.private_key, info=info)
        except Exception:  # InvalidTag, or a malformed encapsulated key
            return
        yield key


def _check_release(release: pb.VaultRelease) -> None:
    """Bound what the host sent before any of it is used."""
    names = (release.domain, release.device, release.key_name)
    if (
        len(release.sealed) != RELEASED_KEY_SIZE
        or len(release.nonce) != wire.ATTEST_NONCE_SIZE
        or release.key_version < 1
        or not all(1 <= len(name) <= 128 for name in names)
    ):
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed vault release (sealed key, nonce, names or key version out of bounds)",
        )


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


class DeviceService:
    """The card's logic, independent of the transport (the gRPC handlers call these methods)."""

    def __init__(
        self,
        device_id: int,
        identity_key: IdentityKey,
        *,
        measurement: bytes | None = None,
        signer: Ed25519PublicKey | None = None,
        max_model_size: int = DEFAULT_MAX_MODEL,
        notice: Notice = _stderr,
    ) -> None:
        self.device_id = device_id
        self._identity_key = identity_key
        self.measurement = software_measurement() if measurement is None else measurement
        self._signer = signer
        self._max_model_size = max_model_size
        self._notice = notice
        self._lock = threading.Lock()
        self._state = _State(X25519Identity.generate(), 1)

    @property
    def session_counter(self) -> int:
        return self._state.counter

    def _check_device(self, device_id: int) -> None:
        if device_id != self.device_id:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND, f"no device {device_id} here (this is device {self.device_id})"
            )

    def attestation_report(self, request: pb.AttestationRequest) -> report_pb.AttestationReport:
        self._check_device(request.device_id)
        if len(request.request) > MAX_REQUEST:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"attestation request over {MAX_REQUEST} bytes")
        with self._lock:
            key, counter = self._state.session_key, self._state.counter
        report = Report(
            self.device_id,
            public_bytes(key.recipient.public_key),
            request_digest(request.request),
            self.measurement,
            counter,
            int(time.time()),
        )
        return report.signed_by(self._identity_key).to_message()

    def load(self, chunks: Iterable[pb.ModelChunk]) -> pb.LoadModelResponse:
        from ..runtimes.onnxruntime import load_session

        fd = os.memfd_create("modelseal-device-ciphertext", os.MFD_CLOEXEC)
        try:
            size = 0
            first = True
            release: pb.VaultRelease | None = None
            for chunk in chunks:
                if first:
                    self._check_device(chunk.device_id)
                    if chunk.HasField("release"):
                        release = chunk.release
                        _check_release(release)
                    first = False
                size += len(chunk.data)
                if size > self._max_model_size:
                    raise _Refused(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, f"model larger than {self._max_model_size} bytes"
                    )
                view = memoryview(chunk.data)
                while view:
                    view = view[os.write(fd, view) :]
            if size == 0:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "no model bytes received")
            # The session key is read once: a Reset during the load must not mix two sessions.
            with self._lock:
                key, counter = self._state.session_key, self._state.counter
            identity = key if release is None else _ReleasedKey(key, release)
            try:
                session = load_session(
                    f"/proc/self/fd/{fd}", identity, signer=self._signer, providers=["CPUExecutionProvider"]
                )
            except ModelSealError:
                raise
            except Exception as e:  # ONNX Runtime's own errors: the model decrypted but is not loadable
                raise _Refused(
                    grpc.StatusCode.INVALID_ARGUMENT, f"not a loadable ONNX model: {_one_line(e)}"
                ) from None
        finally:
            os.close(fd)
        handle = f"s{counter}-{secrets.token_hex(8)}"
        with self._lock:
            if self._state.counter != counter:
                raise _Refused(
                    grpc.StatusCode.FAILED_PRECONDITION, "device was reset during the load: attest again"
                )
            if len(self._state.models) >= MAX_MODELS:
                raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_MODELS} models already loaded")
            self._state.models[handle] = _Loaded(session, counter)
        self._notice(f"device {self.device_id}: loaded a {size}-byte sealed model as {handle}")
        return pb.LoadModelResponse(
            handle=handle,
            session_counter=counter,
            inputs=[_info(i) for i in session.get_inputs()],
            outputs=[_info(o) for o in session.get_outputs()],
        )

    def run(self, request: pb.RunRequest) -> pb.RunResponse:
        self._check_device(request.device_id)
        with self._lock:
            loaded = self._state.models.get(request.handle)
        if loaded is None:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND, f"no model {request.handle!r} in this session (a reset drops all)"
            )
        feeds = {t.name: tensors.decode(t) for t in request.inputs}
        try:
            results = loaded.session.run(None, feeds)
        except Exception as e:  # ORT rejects wrong names, shapes, dtypes with its own exceptions
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"inference failed: {_one_line(e)}") from None
        names = [o.name for o in loaded.session.get_outputs()]
        outputs = []
        for name, value in zip(names, results, strict=True):
            if isinstance(value, list | dict):
                raise _Refused(
                    grpc.StatusCode.UNIMPLEMENTED, f"output {name!r} is a sequence or map, not a tensor"
                )
            outputs.append(tensors.encode(name, value))
        return pb.RunResponse(outputs=outputs)

    def reset(self, request: pb.ResetRequest) -> pb.ResetResponse:
        self._check_device(request.device_id)
        with self._lock:
            old = self._state
            self._state = _State(X25519Identity.generate(), old.counter + 1)
        # Dropping the sessions frees ONNX Runtime's copies of the models; the plaintext buffers
        # modelseal decrypted into were already zeroized when each session was built.
        dropped = len(old.models)
        old.models.clear()
        self._notice(
            f"device {self.device_id}: reset to session {self._state.counter}, dropped {dropped} model(s)"
        )
        return pb.ResetResponse(session_counter=self._state.counter)


def _info(node: Any) -> pb.TensorInfo:
    return pb.TensorInfo(name=node.name, type=str(node.type), shape=[str(d) for d in node.shape or []])


def _abort(context: grpc.ServicerContext, error: BaseException) -> NoReturn:
    code, message = _status(error)
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, _Refused):
        return error.code, error.message
    if isinstance(error, NoMatchingIdentityError):
        return grpc.StatusCode.FAILED_PRECONDITION, NOT_THIS_SESSION
    if isinstance(error, IntegrityError):
        return grpc.StatusCode.DATA_LOSS, error.message
    if isinstance(error, FormatError | UsageError):
        return grpc.StatusCode.INVALID_ARGUMENT, error.message
    if isinstance(error, ModelSealError):
        return grpc.StatusCode.INTERNAL, error.message
    return grpc.StatusCode.INTERNAL, "internal device error"


def _guard(
    service: DeviceService, method: Callable[[Any], Any]
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request)
        except Exception as e:
            if not isinstance(e, _Refused | ModelSealError):
                service._notice(
                    f"device {service.device_id}: internal error: {type(e).__name__}: {_one_line(e)}"
                )
            _abort(context, e)

    return handler


def generic_handler(service: DeviceService) -> Any:
    def unary(method: Callable[[Any], Any], request: Any, response: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            _guard(service, method),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetAttestationReport": unary(
                service.attestation_report, pb.AttestationRequest, report_pb.AttestationReport
            ),
            "LoadModel": grpc.stream_unary_rpc_method_handler(
                _guard(service, service.load),
                request_deserializer=pb.ModelChunk.FromString,
                response_serializer=pb.LoadModelResponse.SerializeToString,
            ),
            "Run": unary(service.run, pb.RunRequest, pb.RunResponse),
            "Reset": unary(service.reset, pb.ResetRequest, pb.ResetResponse),
        },
    )


class DeviceServer:
    """A card listening on ``host:port`` (port 0: a free one, see ``.port``); a context manager."""

    def __init__(
        self,
        device_id: int,
        identity_key: IdentityKey,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        measurement: bytes | None = None,
        signer: Ed25519PublicKey | None = None,
        max_model_size: int = DEFAULT_MAX_MODEL,
        notice: Notice = _stderr,
        max_workers: int = 4,
    ) -> None:
        self.service = DeviceService(
            device_id,
            identity_key,
            measurement=measurement,
            signer=signer,
            max_model_size=max_model_size,
            notice=notice,
        )
        self.host = host
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        # so_reuseport off: two cards must never silently share a port.
        options.append(("grpc.so_reuseport", 0))
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
        self._server.add_generic_rpc_handlers((generic_handler(self.service),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if port:
            # Asked first: gRPC's own refusal also writes a C++ log line to stderr.
            try:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                socket.create_server((host, port), family=family).close()
            except OSError as e:
                why = os.strerror(e.errno) if e.errno else str(e)
                raise ListenError(f"cannot listen on {address}: {why} (pick another --port)") from None
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise ListenError(
                f"cannot listen on {address} (in use or not a local address: pick another --port)"
            )
        self.port: int = bound

    def start(self) -> DeviceServer:
        self._server.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        self._server.stop(grace).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> DeviceServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(
    device_id: int,
    identity_key: IdentityKey,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    measurement: bytes | None = None,
    signer: Ed25519PublicKey | None = None,
    on_ready: Callable[[DeviceServer], None] | None = None,
    notice: Notice = _stderr,
) -> None:
    """Run a card in the foreground until SIGINT or SIGTERM; its session key dies with it."""
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread receives signals, so nothing could stop this loop: use DeviceServer.
        raise UsageError("device.serve() runs in the main thread; elsewhere use DeviceServer")
    server = DeviceServer(
        device_id, identity_key, host=host, port=port, measurement=measurement, signer=signer, notice=notice
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(grace=1.0)
        for s, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, handler)
