"""Device attestation and the emulated accelerator card (the qaic flow): ``pip install 'modelseal[device]'``.

    report = modelseal.device.attest("127.0.0.1", 62473, 0, request)          # host side, untrusted
    key = modelseal.device.verify_report(report, device_pub, request)          # owner side, trusted
    modelseal.wrap_mek(mek, [key.recipient], "wrappedMEK")                     # or seal/rewrap to it
    with modelseal.device.DeviceClient("127.0.0.1", 62473, 0) as card:
        model = card.load("model.onnx.mseal")                                  # only the card decrypts
        outputs = card.run(model.handle, {"input": x})

The card itself: ``modelseal.device.serve(device_id, identity_key, port=...)`` or ``DeviceServer``.
A key service can release the file key to a card instead (``modelseal.vault.client.attested``): the card
gets it HPKE-sealed to its session key, as a ``SealedRelease`` alongside the model's bytes.
"""

from __future__ import annotations

from ..errors import AttestationError, DeviceError, RuntimeUnavailableError

try:
    import google.protobuf  # noqa: F401
    import grpc  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without the extra
    raise RuntimeUnavailableError("grpcio/protobuf", "device") from None

from ..keyrelease.report import DEFAULT_MAX_AGE, Report, SessionKey, verify_report
from .client import DeviceClient, LoadedModel, SealedRelease, TensorSpec, attest
from .measurement import parse_measurement, software_measurement
from .server import DEFAULT_PORT, NOT_THIS_SESSION, DeviceServer, DeviceService, serve

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_PORT",
    "NOT_THIS_SESSION",
    "AttestationError",
    "DeviceClient",
    "DeviceError",
    "DeviceServer",
    "DeviceService",
    "LoadedModel",
    "Report",
    "SealedRelease",
    "SessionKey",
    "TensorSpec",
    "attest",
    "parse_measurement",
    "serve",
    "software_measurement",
    "verify_report",
]
