"""`modelseal`: seal, inspect, verify, rewrap and unseal AI models (age-like flags).

Errors print one line and exit with the error's code (see `modelseal --help`); a traceback only
with --verbose. Secrets are never taken from argv: passphrases come from a file or a prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import modelseal
from modelseal import Identity, Recipient

from .progress import bar

EXIT_CODES = """exit codes:
  0  success
  1  unexpected error
  2  usage error (bad or contradictory arguments)
  3  format error (not a sealed model, malformed or unsupported version)
  4  integrity error (tampered, truncated, spliced; bad signature)
  5  no matching identity (wrong key or passphrase)
  6  key file error
  7  output error (exists, unsafe path, disk)
  8  not enough header room for an in-place rewrap
  9  an optional part is not installed (the message names the pip extra)
  10 crypto-fs or memory-lock error (no FUSE, mount refused, mlock required but refused)
  11 device error (card unreachable or refused; attestation report rejected)
  12 key service (vault) error
  13 vault: permission denied (no, unknown or revoked token; role not allowed)
  14 vault: key not found
  15 vault sealed or unreachable
  16 vault audit chain broken
  17 lease lost: the vault revoked this device or its licence ended (model closed)
  129 stopped by SIGHUP, 130 by Ctrl-C (SIGINT), 143 by SIGTERM: nothing partial is left behind
"""

SEED_TABLE = """seed workflow (qaic-encrypt) -> modelseal:
  encrypt-model --qpc F --mek MEK.dat --output-dir D [--pub-keys P...]
  encrypt-with-session-keys --input-dir D --mek MEK.dat --pub-keys P...
  wrap-mek --mek MEK.dat --pub-keys P... --output-dir W
  replace-mek --encrypted-qpc F --wrapped-meks W... --output-dir O
"""


class CliError(modelseal.UsageError):
    pass


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(t[:-1]) * units[t[-1]]
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4M, 65536)") from None


def _read_passphrase_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(64 << 10)
    except OSError as e:
        raise modelseal.KeyFileError(f"cannot read passphrase file {path}: {e.strerror}") from None
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise modelseal.KeyFileError(f"passphrase file {path} is empty")
    return line


def _prompt_passphrase(confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise CliError("--passphrase needs a terminal; use --passphrase-file in scripts")
    first = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("passphrase (again): ") != first:
        raise CliError("the passphrases differ")
    return first.encode()


def _passphrase(args: argparse.Namespace, confirm: bool) -> bytes | None:
    if getattr(args, "passphrase_file", None):
        return _read_passphrase_file(args.passphrase_file)
    if getattr(args, "passphrase", False):
        return _prompt_passphrase(confirm)
    return None


def _identities(args: argparse.Namespace, required: bool = True) -> list[Identity]:
    found: list[Identity] = [modelseal.load_identity(p) for p in args.identity or []]
    pw = _passphrase(args, confirm=False)
    if pw is not None:
        found.append(modelseal.Passphrase(pw))
    if any(getattr(args, name, None) for name in ("vault", "agent", "device", "psk_file")):
        from .vault import vault_identity

        found.append(vault_identity(args))
    if required and not found:
        raise CliError(
            "give an identity (-i FILE), a passphrase (--passphrase-file F) or a vault (--vault URL)"
        )
    return found


def _source_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --- commands -----------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> None:
    key = modelseal.keygen(args.bits)
    modelseal.write_mek(key, args.output, hex_form=args.hex, overwrite=args.force)
    print(f"wrote a {args.bits}-bit MEK to {args.output} ({'hex' if args.hex else 'raw'})", file=sys.stderr)


def cmd_identity(args: argparse.Namespace) -> None:
    identity = modelseal.generate_identity()
    recipient = modelseal.write_x25519_identity(identity, args.output, overwrite=args.force)
    print(f"wrote X25519 identity to {args.output}; its public recipient:", file=sys.stderr)
    print(recipient)


def cmd_recipient(args: argparse.Namespace) -> None:
    print(modelseal.x25519_recipient_string(modelseal.load_recipient(args.file)))


def cmd_signer(args: argparse.Namespace) -> None:
    pub_path, public = modelseal.write_signer(modelseal.generate_signer(), args.output, overwrite=args.force)
    print(f"wrote owner signer key to {args.output} and {pub_path}; its public key:", file=sys.stderr)
    print(public)


def _metadata(args: argparse.Namespace) -> dict[str, Any] | None:
    meta: dict[str, Any] = {}
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata takes KEY=VALUE, not {item!r}")
        meta[key] = value
    return meta or None


def _recipients(values: Sequence[str] | None) -> list[Recipient]:
    return [modelseal.load_recipient(v) for v in values or []]


def cmd_seal(args: argparse.Namespace) -> None:
    recipients = _recipients(args.recipient)
    pw = _passphrase(args, confirm=True)
    if pw is not None:
        recipients.append(modelseal.Passphrase(pw, log_n=args.scrypt_log_n))
    mek = modelseal.load_mek(args.mek) if args.mek else None
    if args.vault_key:
        from .vault import seal_recipient

        if mek is not None:
            raise CliError("--mek and --vault-key both choose the file key: give one")
        vault_recipient = seal_recipient(args)
        mek, recipients = modelseal.MEK(vault_recipient.data_key), [*recipients, vault_recipient]
    elif args.vault or args.vault_token_file or args.vault_ca:
        raise CliError("--vault, --vault-token-file and --vault-ca need --vault-key NAME")
    signer = modelseal.load_signer(args.sign) if args.sign else None
    src = Path(args.input)
    with bar("sealing", _source_size(src) if src.exists() else 0, not args.quiet) as progress:
        result = modelseal.seal(
            src,
            args.output,
            recipients,
            mek=mek,
            signer=signer,
            chunk_size=args.chunk_size,
            metadata=_metadata(args),
            header_room=args.header_room,
            overwrite=args.force,
            progress=progress,
        )
    if args.json:
        _print_json(result.__dict__)
    else:
        print(
            f"sealed {result.files} file(s), {result.payload_length} bytes -> {result.path}"
            f"{' (signed)' if result.signed else ''}",
            file=sys.stderr,
        )


def cmd_unseal(args: argparse.Namespace) -> None:
    identities = _identities(args)
    signer = modelseal.load_signer_public(args.signer) if args.signer else None
    total = modelseal.inspect(args.input).payload_length
    with bar("unsealing", total, not args.quiet) as progress:
        names = modelseal.unseal(args.input, identities, args.output, signer=signer, progress=progress)
    print(f"unsealed {len(names)} file(s) to {args.output}", file=sys.stderr)


def cmd_inspect(args: argparse.Namespace) -> None:
    info = modelseal.inspect(args.input)
    if args.json:
        _print_json(info.as_dict())
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
    identities = _identities(args, required=False) or None
    signer = modelseal.load_signer_public(args.signer) if args.signer else None
    total = modelseal.inspect(args.input).payload_length
    with bar("verifying", total, not args.quiet) as progress:
        report = modelseal.verify(args.input, identities, signer, progress=progress)
    if args.json:
        _print_json(report.__dict__)
        return
    checked = []
    if report.payload_authenticated:
        checked.append(f"header and payload authenticated ({report.files} file(s))")
    if report.signature_checked:
        checked.append("owner signature valid")
    print(f"OK: {'; '.join(checked)}")


def cmd_rewrap(args: argparse.Namespace) -> None:
    identities = _identities(args)
    add = _recipients(args.recipient)
    if args.add_passphrase_file:
        add.append(
            modelseal.Passphrase(_read_passphrase_file(args.add_passphrase_file), log_n=args.scrypt_log_n)
        )
    if not add and not args.remove_recipient:
        raise CliError("nothing to do: add recipients (-r) and/or remove some (--remove-recipient)")
    size = Path(args.input).stat().st_size if Path(args.input).exists() else 0
    with bar("copying payload", 0 if args.in_place else size, not args.quiet) as progress:
        result = modelseal.rewrap(
            args.input,
            identities,
            add=add,
            remove=args.remove_recipient or [],
            out=args.output,
            in_place=args.in_place,
            overwrite=args.force,
            replace=args.replace,
            progress=progress,
        )
    _report_skipped(result)
    if args.json:
        _print_json(result.__dict__)
    else:
        print(
            f"rewrapped {result.path}{' in place' if result.in_place else ''}; recipients now:",
            file=sys.stderr,
        )
        for label in result.recipients:
            print(f"  {label}", file=sys.stderr)


def _pub_keys(
    values: Sequence[str] | None, devices: Sequence[str] | None = None
) -> list[modelseal.X25519Recipient]:
    """Session keys as device slots: --device N (in order), else the device the key file names
    (`# device: N`), else the key's position."""
    keys = [modelseal.load_recipient(v) for v in values or []]
    if devices:
        if len(devices) != len(keys):
            raise CliError(f"--device names {len(devices)} device(s) for {len(keys)} --pub-keys key(s)")
        keys = [dataclasses.replace(key, slot=device) for key, device in zip(keys, devices, strict=True)]
    return modelseal.device_slots(keys)


def _report_skipped(result: modelseal.RewrapResult) -> None:
    for label in result.skipped:
        print(f"already a recipient, skipped: {label}", file=sys.stderr)


def cmd_encrypt_model(args: argparse.Namespace) -> None:
    src = Path(args.model)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / (src.name + ".mseal")
    with bar("encrypting", _source_size(src) if src.exists() else 0, not args.quiet) as progress:
        result = modelseal.seal(
            src,
            dst,
            _pub_keys(args.pub_keys, args.device),
            mek=modelseal.load_mek(args.mek),
            chunk_size=args.chunk_size,
            overwrite=args.force,
            progress=progress,
        )
    print(f"encrypted {src} -> {result.path}", file=sys.stderr)


def cmd_encrypt_with_session_keys(args: argparse.Namespace) -> None:
    mek = modelseal.load_mek(args.mek)
    recipients = _pub_keys(args.pub_keys, args.device)
    models = sorted(Path(args.input_dir).glob("*.mseal"))
    if not models:
        raise CliError(f"no .mseal files in {args.input_dir}")
    for model in models:
        result = modelseal.rewrap(model, mek, add=recipients, in_place=True, replace=args.replace)
        _report_skipped(result)
        added = len(recipients) - len(result.skipped)
        print(f"added {added} session key(s) to {model}", file=sys.stderr)


def cmd_wrap_mek(args: argparse.Namespace) -> None:
    keys = _pub_keys(args.pub_keys, args.device)
    folders = modelseal.wrap_mek(modelseal.load_mek(args.mek), keys, args.output_dir)
    print(f"wrote {len(folders)} wrapped MEK(s) and config.json to {args.output_dir}", file=sys.stderr)


def cmd_replace_mek(args: argparse.Namespace) -> None:
    wrapped = modelseal.load_wrapped_meks(args.wrapped_meks)
    dst = modelseal.replace_mek(args.encrypted_qpc, wrapped, args.output_dir, overwrite=args.force)
    print(f"wrote {dst} with {len(wrapped)} wrapped MEK(s)", file=sys.stderr)


# --- parser -------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="show a traceback on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


AddParser = Callable[[str, str, str], argparse.ArgumentParser]


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    example: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """One (sub)command: its help, an example in the epilog, and the common -v/-q flags."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    _common(p)
    return p


def _force_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-f", "--force", action="store_true", help=f"replace {what}")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        nargs="+",
        metavar="N",
        help="the device number of each --pub-keys key, in order (default: the key file's "
        "`# device: N` line, else the key's position)",
    )


def _replace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replace",
        action="store_true",
        help="let a key take a device slot another key holds (that key's wrap is dropped)",
    )


def _identity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i",
        "--identity",
        action="append",
        metavar="FILE",
        help="MEK file (raw or hex) or X25519 identity file; repeatable",
    )
    p.add_argument("--passphrase-file", metavar="F", help="read the passphrase from the first line of F")
    p.add_argument("--passphrase", action="store_true", help="prompt for the passphrase")
    p.add_argument("--vault", metavar="URL", help="let this vault unwrap `vault` stanzas")
    p.add_argument("--vault-token-file", metavar="F", help="vault token (env MODELSEAL_VAULT_TOKEN_FILE)")
    p.add_argument("--vault-ca", metavar="CA.pem", help="CA to trust for the vault (env MODELSEAL_VAULT_CA)")
    p.add_argument(
        "--agent",
        metavar="ADDR",
        help="open as a device through the edge agent at unix:PATH (or its URL); needs --psk-file",
    )
    p.add_argument("--device", metavar="ID", help="open as this device (default: the name in the PSK file)")
    p.add_argument("--psk-file", metavar="F", help="the device's PSK file (from `vault device create`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelseal",
        description="Seal (encrypt, authenticate, sign) AI models and open them in memory only.",
        epilog=EXIT_CODES + "\n" + SEED_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"modelseal {modelseal.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return add_command(sub, name, help_text, example)

    p = add("keygen", "create a random model encryption key (MEK)", "modelseal keygen -o MEK.dat")
    p.add_argument("-o", "--output", required=True, help="MEK file to write (mode 0600)")
    p.add_argument("--bits", type=int, choices=(128, 256), default=256, help="key size (default 256)")
    p.add_argument("--hex", action="store_true", help="write hex digits instead of raw bytes")
    _force_arg(p, "an existing key file (its models no longer open with it)")
    p.set_defaults(func=cmd_keygen)

    p = add(
        "identity",
        "create an X25519 identity; prints its public recipient",
        "modelseal identity -o device.key",
    )
    p.add_argument("-o", "--output", required=True, help="identity file to write (PEM, mode 0600)")
    _force_arg(p, "an existing identity file (models sealed to it no longer open with it)")
    p.set_defaults(func=cmd_identity)

    p = add(
        "recipient",
        "print the public recipient of an identity or public key file",
        "modelseal recipient device.key",
    )
    p.add_argument("file")
    p.set_defaults(func=cmd_recipient)

    p = add(
        "signer",
        "create an owner Ed25519 signer key (writes KEY and KEY.pub)",
        "modelseal signer -o owner.key",
    )
    p.add_argument("-o", "--output", required=True, help="private key file (0600); the public one gets .pub")
    _force_arg(p, "existing key files (signatures made with the old key no longer verify against it)")
    p.set_defaults(func=cmd_signer)

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
    p.add_argument("--chunk-size", type=_size, default=modelseal.DEFAULT_CHUNK_SIZE, help="default 4M")
    p.add_argument(
        "--header-room",
        type=_size,
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
    _identity_args(p)
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
    _identity_args(p)
    p.add_argument("--signer", metavar="PUB", help="owner public key (ms-ed25519:... or a .pub file)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = add(
        "rewrap",
        "add or remove recipients; rewrites the header only",
        "modelseal rewrap model.mseal -i MEK.dat -r ms-x25519:... --in-place",
    )
    p.add_argument("input")
    _identity_args(p)
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
    _replace_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rewrap)

    p = add(
        "encrypt-model",
        "qaic: encrypt a model with a MEK (optionally to session keys)",
        "modelseal encrypt-model --qpc programqpc.bin --mek MEK.dat --output-dir ./encryptqpc/",
    )
    p.add_argument(
        "--qpc", "--model", dest="model", required=True, metavar="FILE", help="model file or folder"
    )
    p.add_argument("--mek", required=True, metavar="FILE")
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.add_argument("--pub-keys", nargs="+", metavar="FILE", help="device session public keys")
    _device_arg(p)
    p.add_argument("--chunk-size", type=_size, default=modelseal.DEFAULT_CHUNK_SIZE)
    p.add_argument("-f", "--force", action="store_true")
    p.set_defaults(func=cmd_encrypt_model)

    p = add(
        "encrypt-with-session-keys",
        "qaic: wrap the MEK of every model in DIR to session keys (in place)",
        "modelseal encrypt-with-session-keys --input-dir ./encryptqpc/ --mek MEK.dat --pub-keys pub.dat",
    )
    p.add_argument("--input-dir", required=True, metavar="DIR")
    p.add_argument("--mek", required=True, metavar="FILE")
    p.add_argument("--pub-keys", nargs="+", required=True, metavar="FILE")
    _device_arg(p)
    _replace_arg(p)
    p.set_defaults(func=cmd_encrypt_with_session_keys)

    p = add(
        "wrap-mek",
        "qaic: wrap a MEK to new session keys (MEK.encrypt, MEK.nonce, MEK.pub, config.json)",
        "modelseal wrap-mek --mek MEK.dat --pub-keys pub0.dat pub1.dat --output-dir ./wrappedMEK/",
    )
    p.add_argument("--mek", required=True, metavar="FILE")
    p.add_argument("--pub-keys", nargs="+", required=True, metavar="FILE")
    _device_arg(p)
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.set_defaults(func=cmd_wrap_mek)

    p = add(
        "replace-mek",
        "qaic: swap wrapped MEKs into an encrypted model (no MEK needed)",
        "modelseal replace-mek --encrypted-qpc ./encryptqpc/m.mseal --wrapped-meks ./wrappedMEK/ "
        "--output-dir ./newEncryptedQPC",
    )
    p.add_argument("--encrypted-qpc", required=True, metavar="FILE")
    p.add_argument("--wrapped-meks", nargs="+", required=True, metavar="DIR")
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.add_argument("-f", "--force", action="store_true")
    p.set_defaults(func=cmd_replace_mek)

    from .cfs import add_commands as add_cfs_commands  # here: cli.cfs imports helpers from this module

    add_cfs_commands(add)
    from .device import add_commands as add_device_commands  # same reason as cfs

    add_device_commands(add)
    from .vault import add_commands as add_vault_commands  # same reason as cfs

    add_vault_commands(add)
    from .agent import add_commands as add_agent_commands  # same reason as cfs

    add_agent_commands(add)
    return parser


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def _stop_signals_raise(args: argparse.Namespace) -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C while a command runs (`cfs mount` and `cfs run` install
    their own on top); the old handlers come back after. The servers (`own_signals`) are left to
    their own handling, so a supervisor still sees them stop by the signal it sent."""
    if getattr(args, "own_signals", False) or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _stop_signals_raise(args):
            # A command may return an exit code of its own (cfs run passes on its child's).
            code = args.func(args)
    except modelseal.ModelSealError as e:
        if args.verbose:
            raise
        print(f"modelseal: error: {e.diagnostic}", file=sys.stderr)
        return e.exit_code
    except Stopped as e:
        print(f"modelseal: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("modelseal: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if args.verbose:
            raise
        print(
            f"modelseal: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
