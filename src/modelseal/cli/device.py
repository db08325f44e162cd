"""`modelseal device serve|keygen|attest|verify|load|run|reset|measure`: the qaic attestation flow.

Argparse wiring only, over modelseal.device, which is imported when a command runs so that the
rest of the CLI works without the `device` extra. `attest` takes the seed's
QAicRemoteAttestationClient.py flags (--ip, --port, -d, -i, -o, -j).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import modelseal
from modelseal.errors import OutputError, UsageError
from modelseal.fileio import read_small_file

from ._common import AddParser, CliError, add_command, vault_client

DEFAULT_PORT = 62473  # also modelseal.device.DEFAULT_PORT; repeated so --help needs no grpc import


def _notice(message: str) -> None:
    print(f"modelseal: {message}", file=sys.stderr, flush=True)


def _read(path: str, what: str, limit: int = 64 << 10) -> bytes:
    return read_small_file(path, limit, what, UsageError)


def _write(path: str, data: bytes, force: bool) -> None:
    from modelseal.fileio import atomic_write_bytes

    atomic_write_bytes(path, data, 0o644, overwrite=force)


_TOKEN_FLAGS = (
    ("--pkcs11-module", "pkcs11_module"),
    ("--pkcs11-token", "pkcs11_token"),
    ("--pin-file", "pin_file"),
    ("--key-label", "key_label"),
)


@contextmanager
def _identity_key(args: argparse.Namespace) -> Iterator[Any]:
    """The card's identity key: a key file, or a key kept in a PKCS#11 token (its session open meanwhile)."""
    given = [flag for flag, dest in _TOKEN_FLAGS if getattr(args, dest) is not None]
    if args.identity_key is not None:
        if given:
            raise CliError(
                f"--identity-key and {', '.join(given)} exclude each other: "
                "the identity key comes from a file or from a PKCS#11 token"
            )
        yield modelseal.load_signer(args.identity_key)
        return
    if not given:
        raise CliError(
            "give the card's identity key: --identity-key DEV.key, or --pkcs11-module, "
            "--pkcs11-token, --pin-file and --key-label"
        )
    missing = [flag for flag, dest in _TOKEN_FLAGS if getattr(args, dest) is None]
    if missing:
        raise CliError(f"an identity key in a PKCS#11 token also needs {', '.join(missing)}")
    from modelseal.device.pkcs11_identity import TokenIdentityKey

    with TokenIdentityKey.open(args.pkcs11_module, args.pkcs11_token, args.pin_file, args.key_label) as key:
        yield key


def cmd_serve(args: argparse.Namespace) -> None:
    with _identity_key(args) as key:
        _serve(args, key)


def _serve(args: argparse.Namespace, key: Any) -> None:
    from modelseal import device

    measurement = device.parse_measurement(args.measurement) if args.measurement else None
    signer = modelseal.load_signer_public(args.signer) if args.signer else None

    def ready(server: Any) -> None:
        service = server.service
        # One parseable line: scripts and tests wait for it and read the port (--port 0 picks one).
        _notice(
            f"device {service.device_id} listening on {server.host}:{server.port} "
            f"(session {service.session_counter}, measurement {service.measurement.hex()}, "
            f"identity {modelseal.ed25519_public_string(key.public_key())})"
        )

    device.serve(
        args.device_id,
        key,
        host=args.host,
        port=args.port,
        measurement=measurement,
        signer=signer,
        on_ready=ready,
        notice=_notice,
    )
    _notice(f"device {args.device_id} stopped; its session key is gone")


def cmd_keygen(args: argparse.Namespace) -> None:
    from modelseal.device.pkcs11_identity import generate_token_key
    from modelseal.fileio import atomic_output

    out = Path(args.pub_out)
    if out.exists():  # checked before the token is touched; the write below refuses again
        raise OutputError(f"{out} already exists; refusing to overwrite it")
    where = f"PKCS#11 token {args.pkcs11_token!r}, key {args.key_label!r}"

    def publish(key: Any) -> None:
        text = modelseal.ed25519_public_string(key)
        with atomic_output(out, 0o644, overwrite=False) as f:
            f.write(f"# modelseal device identity public key ({where})\n{text}\n".encode())

    key = generate_token_key(
        args.pkcs11_module, args.pkcs11_token, args.pin_file, args.key_label, publish=publish
    )
    print(modelseal.ed25519_public_string(key))
    _notice(f"generated an Ed25519 identity key in {where} (sensitive, never extractable); wrote {out}")


def cmd_attest(args: argparse.Namespace) -> None:
    from modelseal import device

    request = _read(args.attestation_request, "attestation request")
    data = device.attest(args.ip, args.port, args.device, request, timeout=args.timeout)
    _write(args.attestation_report, data, args.force)
    if args.print_json:
        print(json.dumps(device.Report.from_bytes(data).as_dict(), indent=2))
    _notice(f"wrote the attestation report of device {args.device} to {args.attestation_report}")


def cmd_verify(args: argparse.Namespace) -> None:
    from modelseal import device

    key = device.verify_report(
        _read(args.report, "attestation report"),
        modelseal.load_signer_public(args.device_pub),
        _read(args.request, "attestation request"),
        device_id=args.device,
        measurement=device.parse_measurement(args.measurement) if args.measurement else None,
        max_age=args.max_age,
    )
    key.write(args.output, overwrite=args.force)
    if args.json:
        print(json.dumps({"device": key.device_id, "session": key.session_counter, "recipient": key.text}))
    else:
        print(key.text)
    _notice(
        f"report verified: device {key.device_id}, session {key.session_counter}; "
        f"wrote its session public key to {args.output}"
    )


def _load(card: Any, args: argparse.Namespace, sealed: str) -> Any:
    """Load with the card's session key, or (--vault-device) through an attested vault release."""
    if not args.vault_device:
        return card.load(sealed)
    from modelseal.vault.client.attested import release_to_device

    with vault_client(args.vault, None, args.vault_ca, token_required=False) as vault:
        return release_to_device(
            vault, card, sealed, device=args.vault_device, domain=args.domain, key_name=args.key_name
        )


def cmd_load(args: argparse.Namespace) -> None:
    from modelseal import device

    with device.DeviceClient(args.ip, args.port, args.device, timeout=args.timeout) as card:
        loaded = _load(card, args, args.sealed)
    print(loaded.handle)
    _notice(
        f"device {args.device} loaded {args.sealed} as {loaded.handle} (session {loaded.session_counter}); "
        f"inputs: {', '.join(f'{i.name} {i.type} {list(i.shape)}' for i in loaded.inputs)}"
    )


def _inputs(values: list[str], loaded: Any) -> dict[str, Any]:
    import numpy as np

    feeds: dict[str, Any] = {}
    for value in values:
        name, sep, path = value.rpartition("=")
        if not sep:
            if loaded is None or len(loaded.inputs) != 1:
                raise CliError(
                    f"name the input: --input NAME={value} (the model's inputs are not known here)"
                )
            name = loaded.inputs[0].name
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read {path} as a .npy array: {e}") from None
    return feeds


def cmd_run(args: argparse.Namespace) -> None:
    from modelseal import device

    if (args.sealed is None) == (args.handle is None):
        raise CliError("give a sealed model to load, or --handle of one already loaded (one of them)")
    with device.DeviceClient(args.ip, args.port, args.device, timeout=args.timeout) as card:
        loaded = _load(card, args, args.sealed) if args.sealed else None
        handle = loaded.handle if loaded else args.handle
        outputs = card.run(handle, _inputs(args.input, loaded))
    if args.json:
        print(
            json.dumps(
                {
                    n: {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tolist()}
                    for n, a in outputs.items()
                }
            )
        )
        return
    for name, array in outputs.items():
        print(f"{name}: {array.dtype.name} {list(array.shape)}")
        print(array)


def cmd_reset(args: argparse.Namespace) -> None:
    from modelseal import device

    with device.DeviceClient(args.ip, args.port, args.device, timeout=args.timeout) as card:
        counter = card.reset()
    _notice(f"device {args.device} reset: session {counter}; models must be rewrapped to its new session key")


def cmd_measure(args: argparse.Namespace) -> None:
    from modelseal import device

    print(device.software_measurement().hex())


def _card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ip", default="127.0.0.1", help="host of the card's gRPC server (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"its gRPC port (default {DEFAULT_PORT})")
    p.add_argument("-d", "--device", type=int, default=0, metavar="ID", help="device id (default 0)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds per call (default 300)")


def _token_args(p: argparse.ArgumentParser, *, required: bool, title: str) -> None:
    g = p.add_argument_group(title, "the PIN is read from the first line of a file (chmod 600), never argv")
    g.add_argument("--pkcs11-module", required=required, metavar="SO", help="the token's PKCS#11 library")
    g.add_argument("--pkcs11-token", required=required, metavar="LABEL", help="the token's label")
    g.add_argument("--pin-file", required=required, metavar="F", help="file holding the user PIN")
    g.add_argument("--key-label", required=required, metavar="L", help="label of the Ed25519 key pair")


def _vault_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "attested key release",
        "with --vault-device the vault releases the model's key to the card after checking its report",
    )
    g.add_argument("--vault-device", metavar="NAME", help="the card's device name in the vault")
    g.add_argument("--vault", metavar="URL", help="vault address (env MODELSEAL_VAULT_ADDR)")
    g.add_argument("--vault-ca", metavar="CA.pem", help="CA to trust (env MODELSEAL_VAULT_CA)")
    g.add_argument("--domain", default="default", help="the vault domain (default: default)")
    g.add_argument("--key-name", metavar="K", help="which `vault` stanza, if the model has several")


def add_commands(add: AddParser) -> None:
    """Register `device ...` under a `device` command made with main's ``add``."""
    top = add(
        "device",
        "device attestation and the emulated accelerator card (qaic flow; extra: device)",
        "modelseal device attest --ip 127.0.0.1 -d 0 -i request.dat -o report.dat",
    )
    sub = top.add_subparsers(dest="device_command", required=True, metavar="COMMAND")

    def add_sub(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return add_command(sub, name, help_text, example)

    p = add_sub(
        "serve",
        "run an emulated card: attests with its identity key, opens models wrapped to its session key",
        "modelseal device serve --device-id 0 --identity-key dev0.key --port 62473",
    )
    p.add_argument("--device-id", type=int, required=True, metavar="N")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free one"
    )
    p.add_argument("--identity-key", metavar="DEV.key", help="Ed25519 identity key file (`modelseal signer`)")
    p.add_argument("--measurement", metavar="HEX", help="report this value instead of measuring the code")
    p.add_argument("--signer", metavar="PUB", help="load only models signed by this owner")
    _token_args(p, required=False, title="or an identity key kept in a PKCS#11 token (`device keygen`)")
    p.set_defaults(func=cmd_serve, own_signals=True)

    p = add_sub(
        "keygen",
        "generate a card identity key inside a PKCS#11 token (never extractable); write its public key",
        "modelseal device keygen --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --pkcs11-token card0 "
        "--pin-file card0.pin --key-label dev0 --pub-out dev0.pub",
    )
    _token_args(p, required=True, title="the token")
    p.add_argument(
        "--pub-out", required=True, metavar="DEV.pub", help="where to write the public key (--device-pub)"
    )
    p.set_defaults(func=cmd_keygen)

    p = add_sub(
        "attest",
        "ask a card for a signed attestation report over a request (the nonce)",
        "modelseal device attest --ip 10.0.0.5 -d 0 -i request.dat -o report.dat --print-json",
    )
    _card_args(p)
    p.add_argument(
        "-i", "--attestation-request", "--attestation_request", required=True, metavar="FILE",
        help="request bytes (a fresh nonce); the report carries their SHA-256",
    )  # fmt: skip
    p.add_argument(
        "-o", "--attestation-report", "--attestation_report", default="report.dat", metavar="FILE",
        help="where to write the signed report (default report.dat)",
    )  # fmt: skip
    p.add_argument("-j", "--print-json", "--print_json", action="store_true", help="also print it as JSON")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing report file")
    p.set_defaults(func=cmd_attest)

    p = add_sub(
        "verify",
        "check a report (signature, request, device, measurement, age); write its session public key",
        "modelseal device verify report.dat --device-pub dev0.pub --request request.dat -o pub0.dat",
    )
    p.add_argument("report", metavar="REPORT")
    p.add_argument("--device-pub", required=True, metavar="DEV.pub", help="the card's identity public key")
    p.add_argument("--request", required=True, metavar="FILE", help="the request given to `attest`")
    p.add_argument(
        "-o", "--output", required=True, metavar="PUB", help="session key file for --pub-keys / -r"
    )
    p.add_argument("-d", "--device", type=int, metavar="ID", help="require this device id")
    p.add_argument("--measurement", metavar="HEX", help="require this software measurement")
    p.add_argument("--max-age", type=float, default=300.0, metavar="S", help="oldest report accepted (300)")
    p.add_argument("--json", action="store_true")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing session key file")
    p.set_defaults(func=cmd_verify)

    p = add_sub(
        "load",
        "stream a sealed model to a card (it decrypts; the host never does); prints the handle",
        "modelseal device load --ip 127.0.0.1 -d 0 encryptqpc/model.onnx.mseal",
    )
    _card_args(p)
    _vault_args(p)
    p.add_argument("sealed", metavar="MODEL.mseal")
    p.set_defaults(func=cmd_load)

    p = add_sub(
        "run",
        "load a sealed model into a card (or use --handle) and run it on .npy inputs",
        "modelseal device run --ip 127.0.0.1 -d 0 model.onnx.mseal --input input=x.npy",
    )
    _card_args(p)
    _vault_args(p)
    p.add_argument("sealed", nargs="?", metavar="MODEL.mseal")
    p.add_argument("--handle", help="a model loaded earlier with `device load` (same session)")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="[NAME=]FILE.npy",
        help="an input tensor; repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the outputs as JSON")
    p.set_defaults(func=cmd_run)

    p = add_sub(
        "reset",
        "reset a card: new session key, loaded models dropped",
        "modelseal device reset --ip 127.0.0.1 -d 2",
    )
    _card_args(p)
    p.set_defaults(func=cmd_reset)

    p = add_sub(
        "measure",
        "print the measurement a card running this installation reports (for verify --measurement)",
        "modelseal device measure",
    )
    p.set_defaults(func=cmd_measure)


__all__ = ["add_commands"]
