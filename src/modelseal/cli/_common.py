"""What every command module of the CLI shares: the usage error, the command builder, the flags
several commands take (identities, passphrases, --force, session-key devices) and their reading.

Imports only the public library and, inside functions, the vault client for `--vault`/`--agent`
identities: the core commands start without the `vault` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modelseal
from modelseal import Identity, Recipient

if TYPE_CHECKING:
    from modelseal.vault.client import VaultClient, VaultRecipient


class CliError(modelseal.UsageError):
    pass


AddParser = Callable[[str, str, str], argparse.ArgumentParser]
if TYPE_CHECKING:
    from typing import TypeAlias

    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


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
    p.add_argument("-v", "--verbose", action="store_true", help="show a traceback on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def require_extra(extra: str, *modules: str) -> None:
    """Fail with the pip extra to install when one of ``modules`` is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise modelseal.RuntimeUnavailableError(e.name or name, extra) from None


def require_vault_extra() -> None:
    require_extra("vault", "httpx", "sqlalchemy")


def size(text: str) -> int:
    """A size flag: bytes, or with a K/M/G/T suffix (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    clean = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (clean[:-1], clean[-1]) if clean[-1:] in units and clean[-1:] else (clean, "")
    if not number.isdigit() or len(number) > 15:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4M, 64G, 65536)")
    return int(number) * units[unit]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def source_size(path: Path) -> int:
    """Bytes a seal of ``path`` reads (for the progress bar)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- `vault ...` subcommands (cli.vault, vault_server, vault_admin) ----------------------------


def leaf(sub: Subcommands, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    """A `vault` subcommand: its help and example, and a -v that keeps a `vault -v` given before it."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # `--token X` must not pass as an abbreviation of --token-file and send X into an error
        allow_abbrev=False,
    )
    # SUPPRESS: a leaf's default must not overwrite `vault -v` given before the subcommand.
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show a traceback on errors",
    )
    return p


def api_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of a command that talks to the REST API."""
    p.add_argument("--vault", metavar="URL", help="vault address (env MODELSEAL_VAULT_ADDR)")
    p.add_argument(
        "--token-file", metavar="F", help="file holding the token (env MODELSEAL_VAULT_TOKEN_FILE)"
    )
    p.add_argument(
        "--ca", metavar="CA.pem", help="CA to trust, e.g. DIR/tls/ca.pem (env MODELSEAL_VAULT_CA)"
    )
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow sending the token to an http:// vault (a test vault on this machine; never in use)",
    )
    return p


def data_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of a command that works on the data folder itself."""
    p.add_argument("--data", required=True, metavar="DIR", help="the vault's data folder")
    p.add_argument("--database", metavar="URL", help="SQLAlchemy URL (default: SQLite in DIR)")
    return p


# --- flags several commands take ---------------------------------------------------------------


def connection_flags(p: argparse.ArgumentParser) -> None:
    """A server's connection limits (modelseal.service.connections)."""
    g = p.add_argument_group("connections")
    g.add_argument(
        "--head-timeout", type=float, default=10.0, metavar="S",
        help="close a connection whose request head takes longer than S seconds (default 10)",
    )
    g.add_argument(
        "--keep-alive", type=int, default=5, metavar="S",
        help="close idle connections after S seconds (default 5)",
    )
    g.add_argument(
        "--max-connections", type=int, default=1000, metavar="N",
        help="past N open connections and requests, answer 503 (default 1000)",
    )  # fmt: skip


def connection_limits(args: argparse.Namespace) -> Any:
    from modelseal.service.connections import ConnectionLimits

    try:
        return ConnectionLimits(args.head_timeout, args.keep_alive, args.max_connections)
    except ValueError as e:
        raise CliError(str(e)) from None


def force_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-f", "--force", action="store_true", help=f"replace {what}")


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        nargs="+",
        metavar="N",
        help="the device number of each --pub-keys key, in order (default: the key file's "
        "`# device: N` line, else the key's position)",
    )


def replace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replace",
        action="store_true",
        help="let a key take a device slot another key holds (that key's wrap is dropped)",
    )


def identity_args(p: argparse.ArgumentParser) -> None:
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


# --- reading those flags -----------------------------------------------------------------------


def read_passphrase_file(path: str) -> bytes:
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


def passphrase(args: argparse.Namespace, confirm: bool) -> bytes | None:
    if getattr(args, "passphrase_file", None):
        return read_passphrase_file(args.passphrase_file)
    if getattr(args, "passphrase", False):
        return _prompt_passphrase(confirm)
    return None


def identities(args: argparse.Namespace, required: bool = True) -> list[Identity]:
    found: list[Identity] = [modelseal.load_identity(p) for p in args.identity or []]
    pw = passphrase(args, confirm=False)
    if pw is not None:
        found.append(modelseal.Passphrase(pw))
    if any(getattr(args, name, None) for name in ("vault", "agent", "device", "psk_file")):
        found.append(vault_identity(args))
    if required and not found:
        raise CliError(
            "give an identity (-i FILE), a passphrase (--passphrase-file F) or a vault (--vault URL)"
        )
    return found


def recipients(values: Sequence[str] | None) -> list[Recipient]:
    return [modelseal.load_recipient(v) for v in values or []]


def pub_keys(
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


def report_skipped(result: modelseal.RewrapResult) -> None:
    for label in result.skipped:
        print(f"already a recipient, skipped: {label}", file=sys.stderr)


# --- the vault as an identity or a recipient ---------------------------------------------------


def vault_client(
    address: str | None,
    token_file: str | None,
    ca: str | None,
    *,
    token_required: bool = True,
    insecure_http: bool = False,
) -> VaultClient:
    require_vault_extra()
    from modelseal.vault.client import VaultClient

    return VaultClient.from_settings(
        address, token_file, ca, token_required=token_required, insecure_http=insecure_http
    )


def seal_recipient(args: argparse.Namespace) -> VaultRecipient:
    """For `modelseal seal --vault-key`: a fresh data key from the vault, as MEK + stanza."""
    from modelseal.vault.client import VaultRecipient

    with vault_client(args.vault, args.vault_token_file, args.vault_ca) as client:
        return VaultRecipient.prepare(client, args.vault_key)


def vault_identity(args: argparse.Namespace) -> Identity:
    """For unseal/verify/rewrap --vault: the vault unwraps `vault` stanzas (its token decides).

    With --device and --psk-file it is a device instead: key release with a PSK proof, no token.
    """
    device, psk_file = getattr(args, "device", None), getattr(args, "psk_file", None)
    agent = getattr(args, "agent", None)
    if device or psk_file or agent:
        if not psk_file:
            raise CliError("a device needs its --psk-file (with --agent unix:PATH or --vault URL)")
        if agent and args.vault:
            raise CliError("give --agent or --vault, not both: a device talks to one of them")
        client = vault_client(agent or args.vault, None, args.vault_ca, token_required=False)
        from modelseal.vault.client import DeviceIdentity

        return DeviceIdentity.from_psk_file(client, psk_file, device=device)

    from modelseal.vault.client import VaultIdentity

    return VaultIdentity(vault_client(args.vault, args.vault_token_file, args.vault_ca))
