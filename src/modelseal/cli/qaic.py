"""The seed's qaic-encrypt workflow under the same flags: `encrypt-model`,
`encrypt-with-session-keys`, `wrap-mek`, `replace-mek` (session keys bound to device slots)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import modelseal

from ._common import AddParser, CliError, device_arg, pub_keys, replace_arg, report_skipped, size, source_size
from .progress import bar


def cmd_encrypt_model(args: argparse.Namespace) -> None:
    src = Path(args.model)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / (src.name + ".mseal")
    with bar("encrypting", source_size(src) if src.exists() else 0, not args.quiet) as progress:
        result = modelseal.seal(
            src,
            dst,
            pub_keys(args.pub_keys, args.device),
            mek=modelseal.load_mek(args.mek),
            chunk_size=args.chunk_size,
            overwrite=args.force,
            progress=progress,
        )
    print(f"encrypted {src} -> {result.path}", file=sys.stderr)


def cmd_encrypt_with_session_keys(args: argparse.Namespace) -> None:
    mek = modelseal.load_mek(args.mek)
    recipients = pub_keys(args.pub_keys, args.device)
    models = sorted(Path(args.input_dir).glob("*.mseal"))
    if not models:
        raise CliError(f"no .mseal files in {args.input_dir}")
    for model in models:
        result = modelseal.rewrap(model, mek, add=recipients, in_place=True, replace=args.replace)
        report_skipped(result)
        added = len(recipients) - len(result.skipped)
        print(f"added {added} session key(s) to {model}", file=sys.stderr)


def cmd_wrap_mek(args: argparse.Namespace) -> None:
    keys = pub_keys(args.pub_keys, args.device)
    folders = modelseal.wrap_mek(modelseal.load_mek(args.mek), keys, args.output_dir)
    print(f"wrote {len(folders)} wrapped MEK(s) and config.json to {args.output_dir}", file=sys.stderr)


def cmd_replace_mek(args: argparse.Namespace) -> None:
    wrapped = modelseal.load_wrapped_meks(args.wrapped_meks)
    dst = modelseal.replace_mek(args.encrypted_qpc, wrapped, args.output_dir, overwrite=args.force)
    print(f"wrote {dst} with {len(wrapped)} wrapped MEK(s)", file=sys.stderr)


def add_commands(add: AddParser) -> None:
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
    device_arg(p)
    p.add_argument("--chunk-size", type=size, default=modelseal.DEFAULT_CHUNK_SIZE)
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
    device_arg(p)
    replace_arg(p)
    p.set_defaults(func=cmd_encrypt_with_session_keys)

    p = add(
        "wrap-mek",
        "qaic: wrap a MEK to new session keys (MEK.encrypt, MEK.nonce, MEK.pub, config.json)",
        "modelseal wrap-mek --mek MEK.dat --pub-keys pub0.dat pub1.dat --output-dir ./wrappedMEK/",
    )
    p.add_argument("--mek", required=True, metavar="FILE")
    p.add_argument("--pub-keys", nargs="+", required=True, metavar="FILE")
    device_arg(p)
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
