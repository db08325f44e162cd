"""`keygen`, `identity`, `recipient`, `signer`: make and show keys (never overwriting one)."""

from __future__ import annotations

import argparse
import sys

import modelseal

from ._common import AddParser, force_arg


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


def add_commands(add: AddParser) -> None:
    p = add("keygen", "create a random model encryption key (MEK)", "modelseal keygen -o MEK.dat")
    p.add_argument("-o", "--output", required=True, help="MEK file to write (mode 0600)")
    p.add_argument("--bits", type=int, choices=(128, 256), default=256, help="key size (default 256)")
    p.add_argument("--hex", action="store_true", help="write hex digits instead of raw bytes")
    force_arg(p, "an existing key file (its models no longer open with it)")
    p.set_defaults(func=cmd_keygen)

    p = add(
        "identity",
        "create an X25519 identity; prints its public recipient",
        "modelseal identity -o device.key",
    )
    p.add_argument("-o", "--output", required=True, help="identity file to write (PEM, mode 0600)")
    force_arg(p, "an existing identity file (models sealed to it no longer open with it)")
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
    force_arg(p, "existing key files (signatures made with the old key no longer verify against it)")
    p.set_defaults(func=cmd_signer)
