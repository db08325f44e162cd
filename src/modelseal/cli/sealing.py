"""`seal`, `unseal`, `inspect`, `verify`, `rewrap`: the sealed-model commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import modelseal

from ._common import (
    AddParser,
    CliError,
    identities,
    identity_args,
    passphrase,
    print_json,
    read_passphrase_file,
    recipients,
    replace_arg,
    report_skipped,
    seal_recipient,
    size,
    source_size,
)
from .progress import bar


def _metadata(args: argparse.Namespace) -> dict[str, Any] | None:
    meta: dict[str, Any] = {}
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata takes KEY=VALUE, not {item!r}")
        meta[key] = value
    return meta or None


def cmd_seal(args: argparse.Namespace) -> None:
    to = recipients(args.recipient)
    pw = passphrase(args, confirm=True)
    if pw is not None:
        to.append(modelseal.Passphrase(pw, log_n=args.scrypt_log_n))
    mek = modelseal.load_mek(args.mek) if args.mek else None
    if args.vault_key:
        if mek is not None:
            raise CliError("--mek and --vault-key both choose the file key: give one")
        vault_recipient = seal_recipient(args)
        mek, to = modelseal.MEK(vault_recipient.data_key), [*to, vault_recipient]
    elif args.vault or args.vault_token_file or args.vault_ca:
        raise CliError("--vault, --vault-token-file and --vault-ca need --vault-key NAME")
    signer = modelseal.load_signer(args.sign) if args.sign else None
    src = Path(args.input)
    with bar("sealing", source_size(src) if src.exists() else 0, not args.quiet) as progress:
        result = modelseal.seal(
            src,
            args.output,
            to,
            mek=mek,
            signer=signer,
            chunk_size=args.chunk_size,
            metadata=_metadata(args),
            header_room=args.header_room,
            overwrite=args.force,
            progress=progress,
        )
    if args.json:
        print_json(result.__dict__)
    else:
        print(
            f"sealed {result.files} file(s), {result.payload_length} bytes -> {result.path}"
            f"{' (signed)' if result.signed else ''}",
            file=sys.stderr,
        )


def cmd_unseal(args: argparse.Namespace) -> None:
    keys = identities(args)
    signer = modelseal.load_signer_public(args.signer) if args.signer else None
    total = modelseal.inspect(args.input).payload_length
    with bar("unsealing", total, not args.quiet) as progress:
        names = modelseal.unseal(args.input, keys, args.output, signer=signer, progress=progress)
    print(f"unsealed {len(names)} file(s) to {args.output}", file=sys.stderr)


def cmd_inspect(args: argparse.Namespace) -> None:
    info = modelseal.inspect(args.input)
    if args.json:
        print_json(info.as_dict())
        return
    print(f"file:            {info.path}")
    print(f"format version:  {info.format_version}")
    print(f"payload:         {info.payload_length} bytes in {info.chunk_count} chunk(s) of {info.chunk_size}")
    warning = "" if info.size_consistent else "  (INCONSISTENT: truncated or extended)"
    print(f"file size:       {info.file_size} bytes{warning}")
    print(f"header:          {info.header_length} bytes, {info.header_room} spare for in-place rewrap")
    print(f"signed by:       {info.signer or 'not signed'}")
    print("recipients:")
    for label in info.recipients or ["(none: only the MEK opens it)"]:
        device = info.devices.get(label)
        print(f"  {label}{f'  (device {device})' if device is not None else ''}")
    if info.metadata:
        print("metadata:")
        for key, value in sorted(info.metadata.items()):
            print(f"  {key}: {value}")


def cmd_verify(args: argparse.Namespace) -> None:
    keys = identities(args, required=False) or None
    signer = modelseal.load_signer_public(args.signer) if args.signer else None
    total = modelseal.inspect(args.input).payload_length
    with bar("verifying", total, not args.quiet) as progress:
        report = modelseal.verify(args.input, keys, signer, progress=progress)
    if args.json:
        print_json(report.__dict__)
        return
    checked = []
    if report.payload_authenticated:
        checked.append(f"header and payload authenticated ({report.files} file(s))")
    if report.signature_checked:
        checked.append("owner signature valid")
    print(f"OK: {'; '.join(checked)}")


def cmd_rewrap(args: argparse.Namespace) -> None:
    keys = identities(args)
    add = recipients(args.recipient)
    if args.add_passphrase_file:
        add.append(
            modelseal.Passphrase(read_passphrase_file(args.add_passphrase_file), log_n=args.scrypt_log_n)
        )
    if not add and not args.remove_recipient:
        raise CliError("nothing to do: add recipients (-r) and/or remove some (--remove-recipient)")
    size = Path(args.input).stat().st_size if Path(args.input).exists() else 0
    with bar("copying payload", 0 if args.in_place else size, not args.quiet) as progress:
        result = modelseal.rewrap(
            args.input,
            keys,
            add=add,
            remove=args.remove_recipient or [],
            out=args.output,
            in_place=args.in_place,
            overwrite=args.force,
            replace=args.replace,
            progress=progress,
        )
    report_skipped(result)
    if args.json:
        print_json(result.__dict__)
    else:
        print(
            f"rewrapped {result.path}{' in place' if result.in_place else ''}; recipients now:",
            file=sys.stderr,
        )
        for label in result.recipients:
            print(f"  {label}", file=sys.stderr)


def add_commands(add: AddParser) -> None:
    p = add(
        "seal",
        "encrypt and authenticate a model file or folder",
        "modelseal seal model.onnx -o model.mseal --mek MEK.dat -r ms-x25519:... --sign owner.key",
    )
    p.add_argument("input", help="model file or folder")
    p.add_argument("-o", "--output", required=True, help="sealed file to write")
    p.add_argument("--mek", metavar="MEK.dat", help="use this key file as the file key (else a random one)")
    p.add_argument(
        "-r",
        "--recipient",
        action="append",
        metavar="R",
        help="X25519 recipient (ms-x25519:... or a public key file); repeatable",
    )
    p.add_argument(
        "--passphrase-file", metavar="F", help="also seal to the passphrase on the first line of F"
    )
    p.add_argument("--passphrase", action="store_true", help="also seal to a passphrase typed at a prompt")
    p.add_argument("--scrypt-log-n", type=int, default=18, help="scrypt work factor log2(N) (default 18)")
    p.add_argument("--sign", metavar="KEY", help="sign with this owner signer key")
    p.add_argument("--vault-key", metavar="NAME", help="seal under a new data key from this vault master key")
    p.add_argument("--vault", metavar="URL", help="vault address (env MODELSEAL_VAULT_ADDR)")
    p.add_argument("--vault-token-file", metavar="F", help="token file (env MODELSEAL_VAULT_TOKEN_FILE)")
    p.add_argument("--vault-ca", metavar="CA.pem", help="CA to trust (env MODELSEAL_VAULT_CA)")
    p.add_argument("--chunk-size", type=size, default=modelseal.DEFAULT_CHUNK_SIZE, help="default 4M")
    p.add_argument(
        "--header-room",
        type=size,
        default=modelseal.DEFAULT_HEADER_ROOM,
        help="spare header bytes for later in-place rewraps (default 4K)",
    )
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="public metadata; repeatable")
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_seal)

    p = add(
        "unseal",
        "decrypt a sealed model to disk (explicit: writes plaintext)",
        "modelseal unseal model.mseal -o model.onnx -i MEK.dat",
    )
    p.add_argument("input")
    p.add_argument(
        "-o", "--output", required=True, help="file (or folder, for a sealed folder); must not exist"
    )
    identity_args(p)
    p.add_argument("--signer", metavar="PUB", help="also require this owner's signature")
    p.set_defaults(func=cmd_unseal)

    p = add("inspect", "show what the header says (no key needed)", "modelseal inspect model.mseal --json")
    p.add_argument("input")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = add(
        "verify",
        "check integrity and/or the owner signature; writes nothing",
        "modelseal verify model.mseal -i MEK.dat --signer owner.pub",
    )
    p.add_argument("input")
    identity_args(p)
    p.add_argument("--signer", metavar="PUB", help="owner public key (ms-ed25519:... or a .pub file)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = add(
        "rewrap",
        "add or remove recipients; rewrites the header only",
        "modelseal rewrap model.mseal -i MEK.dat -r ms-x25519:... --in-place",
    )
    p.add_argument("input")
    identity_args(p)
    p.add_argument("-r", "--recipient", action="append", metavar="R", help="recipient to add; repeatable")
    p.add_argument("--add-passphrase-file", metavar="F", help="add a passphrase recipient")
    p.add_argument("--scrypt-log-n", type=int, default=18)
    p.add_argument(
        "--remove-recipient",
        action="append",
        metavar="ID",
        help="recipient to remove: a label from `inspect`, a type, or ms-x25519:...; repeatable",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", help="write a new sealed file (payload copied, not re-encrypted)")
    where.add_argument("--in-place", action="store_true", help="rewrite the header in place")
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    replace_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rewrap)
