"""`vault key|datakey|token|device|policy|licence|model`: the key service's REST API, with a token
read from a file (--token-file or MODELSEAL_VAULT_TOKEN_FILE), never from argv."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import modelseal

from ._common import CliError, print_json, vault_client

if TYPE_CHECKING:
    from modelseal.vault.client import VaultClient


def client_of(args: argparse.Namespace, token_required: bool = True) -> VaultClient:
    """The client a `vault` subcommand's --vault/--token-file/--ca (or their env) describe."""
    return vault_client(
        args.vault,
        args.token_file,
        args.ca,
        token_required=token_required,
        insecure_http=getattr(args, "insecure_http", False),
    )


def cmd_key_create(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.create_key(args.name, args.type))


def cmd_key_list(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json({"keys": client.list_keys()})


def cmd_key_read(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.read_key(args.name))


def cmd_key_rotate(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.rotate_key(args.name))


def cmd_key_config(args: argparse.Namespace) -> None:
    if args.min_decryption_version is None and args.disabled is None:
        raise CliError("nothing to change: give --min-decryption-version N, --disable or --enable")
    with client_of(args) as client:
        print_json(
            client.config_key(
                args.name, min_decryption_version=args.min_decryption_version, disabled=args.disabled
            )
        )


_T = TypeVar("_T")


def _create_with_secret(
    target: str | None,
    force: bool,
    create: Callable[[], _T],
    secret: Callable[[_T], bytes],
    undo: Callable[[_T], str],
) -> _T:
    """Create a server-side object whose secret goes to the new 0600 file ``target``.

    The file is opened (so its folder is writable and an existing file refused) before the vault is
    asked; if writing it fails anyway (disk full, a name that appeared meanwhile), ``undo`` withdraws
    what was created, so no device or token exists whose secret nobody holds. None or `-`: stdout.
    """
    if target is None or target == "-":
        made = create()
        sys.stdout.write(secret(made).decode())
        return made
    from modelseal.fileio import atomic_output

    created: list[_T] = []
    try:
        with atomic_output(target, 0o600, overwrite=force) as f:
            created.append(create())
            f.write(secret(created[0]))
    except BaseException as e:
        if not created:
            raise
        try:
            undone = undo(created[0])
        except modelseal.ModelSealError as failed:
            undone = f"withdrawing what was created failed too ({failed.diagnostic}): do it by hand"
        if isinstance(e, modelseal.ModelSealError):
            raise modelseal.OutputError(f"{e.diagnostic}; {undone}") from None
        raise
    return created[0]


def cmd_datakey(args: argparse.Namespace) -> None:
    import base64

    from modelseal.fileio import atomic_output

    answer = None
    with client_of(args) as client:
        if args.mek_out is None:
            answer = client.datakey(args.name)
        else:
            # Opened first: the plaintext data key is an audited release, not to be made for nothing.
            with atomic_output(args.mek_out, 0o600, overwrite=args.force) as f:
                answer = client.datakey(args.name, plaintext=True)
                assert answer.plaintext is not None
                f.write(answer.plaintext)
    print_json(
        {
            "key_name": answer.key_name,
            "key_version": answer.key_version,
            "wrapped": base64.b64encode(answer.wrapped).decode(),
        }
    )


def cmd_token_create(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        if not args.output:
            print(f"{args.role} token (shown once):", file=sys.stderr)

        def revoke(answer: dict[str, Any]) -> str:
            client.revoke_token(str(answer["accessor"]))
            return f"the new token {answer['accessor']} was revoked"

        answer = _create_with_secret(
            args.output,
            args.force,
            lambda: client.create_token(args.role, args.name),
            lambda answer: f"{answer['token']}\n".encode(),
            revoke,
        )
    answer.pop("token")
    if args.output:
        print(f"wrote the {args.role} token to {args.output}", file=sys.stderr)
    if args.json:
        print_json(answer)


def cmd_token_list(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json({"tokens": client.list_tokens()})


def cmd_token_revoke(args: argparse.Namespace) -> None:
    if args.accessor.startswith("msv."):
        # Someone pasted the token itself: refuse before it travels anywhere (and don't echo it).
        raise CliError("that is a token, not its accessor: `modelseal vault token list` shows accessors")
    with client_of(args) as client:
        print_json(client.revoke_token(args.accessor))


def cmd_key_export(args: argparse.Namespace) -> None:
    from modelseal.fileio import atomic_output
    from modelseal.keyfiles import parse_recipient, x25519_recipient_string
    from modelseal.vault.server import guard_fingerprint, parse_bundle

    guard = parse_recipient(args.guard_pub)  # the text form, or a file holding it (or PEM)
    if not args.force and Path(args.output).exists():
        # Checked before asking: an export is an audited event, not to be made for nothing.
        raise modelseal.OutputError(f"{args.output} exists (give --force to replace it)")
    with client_of(args) as client:
        bundle = client.export_key(args.name, x25519_recipient_string(guard))
    data = (json.dumps(bundle, indent=2, sort_keys=True) + "\n").encode()
    header, _ = parse_bundle(data)  # a malformed answer is an error here, not a file to find later
    if header["guard"] != guard_fingerprint(guard.public_key) or header["key_name"] != args.name:
        raise modelseal.IntegrityError("the vault's export bundle names another guard or key")
    with atomic_output(args.output, 0o600, overwrite=args.force) as f:
        f.write(data)
    print(
        f"wrote key {args.name!r} versions {header['versions']} sealed to guard {header['guard']} "
        f"to {args.output}",
        file=sys.stderr,
    )


def _psk_file(psk: bytes, device: str, domain: str) -> bytes:
    """The PSK file: `#` lines name the device (and its domain), so `--psk-file` alone tells a
    container who it is (load_credential reads them)."""
    lines = [f"# device: {device}\n" if device else "", f"# domain: {domain}\n" if domain else ""]
    return ("".join(lines) + psk.hex() + "\n").encode()


def _device_with_psk(
    args: argparse.Namespace,
    make: Callable[[], tuple[dict[str, Any], bytes]],
    undo: Callable[[tuple[dict[str, Any], bytes]], str],
) -> None:
    """Create or rotate, the PSK going to a new 0600 file (or stdout with `-`)."""

    def secret(made: tuple[dict[str, Any], bytes]) -> bytes:
        meta, psk = made
        if args.psk_out == "-":
            return psk.hex().encode() + b"\n"
        return _psk_file(psk, args.name, str(meta.get("domain", "")))

    meta, _ = _create_with_secret(args.psk_out, args.force, make, secret, undo)
    if args.psk_out != "-":
        print(f"wrote the device PSK to {args.psk_out} (give it to the device only)", file=sys.stderr)
    # With `--psk-out -` stdout carries the PSK alone, so a script can capture it cleanly.
    print(json.dumps(meta, indent=2, sort_keys=True), file=sys.stderr if args.psk_out == "-" else sys.stdout)


def cmd_device_create(args: argparse.Namespace) -> None:
    with client_of(args) as client:

        def revoke(made: object) -> str:
            client.revoke_device(args.name)
            return f"device {args.name} was revoked, since nobody holds its PSK"

        _device_with_psk(args, lambda: client.create_device(args.name, args.group or []), revoke)


def cmd_device_rotate(args: argparse.Namespace) -> None:
    with client_of(args) as client:

        def explain(made: object) -> str:
            # Nobody holds the new PSK, so the device is as good as locked: rotating again mends it.
            return f"device {args.name}'s PSK was rotated but not kept: rotate it again"

        _device_with_psk(args, lambda: client.rotate_psk(args.name), explain)


def cmd_device_list(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json({"devices": client.list_devices()})


def cmd_device_read(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.read_device(args.name))


def cmd_device_revoke(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.revoke_device(args.name))


def cmd_device_unlock(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.unlock_device(args.name))


def cmd_device_enroll(args: argparse.Namespace) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    # DEV.pub is what `modelseal signer` writes for a card (`modelseal device verify` reads it too).
    public = modelseal.load_signer_public(args.device_pub).public_bytes(Encoding.Raw, PublicFormat.Raw)
    measurement = None
    if args.measurement:
        from modelseal.device.measurement import parse_measurement

        measurement = parse_measurement(args.measurement)
    with client_of(args) as client:
        print_json(client.enroll_device(args.name, public, measurement))


def cmd_policy_create(args: argparse.Namespace) -> None:
    if not args.device and not args.group:
        raise CliError("a policy names at least one --device or --group (default deny otherwise)")
    with client_of(args) as client:
        print_json(client.put_policy(args.name, args.key, devices=args.device or [], groups=args.group or []))


def cmd_policy_list(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json({"policies": client.list_policies()})


def cmd_policy_read(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.read_policy(args.name))


def cmd_licence_create(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(
            client.create_licence(
                args.name,
                args.policy,
                not_after=args.not_after,
                max_uses=args.max_uses,
                max_devices=args.max_devices,
            )
        )


def cmd_licence_read(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.read_licence(args.name))


def cmd_model_upload(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.upload_model(args.id, args.file, replace=args.replace))


def cmd_model_list(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json({"models": client.list_models()})


def cmd_model_show(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        print_json(client.model_info(args.id))


def cmd_model_download(args: argparse.Namespace) -> None:
    if Path(args.output).exists() and not args.force:
        raise modelseal.OutputError(f"{args.output} exists (give --force to replace it)")
    with client_of(args) as client:
        print_json(client.download_model(args.id, args.output))
