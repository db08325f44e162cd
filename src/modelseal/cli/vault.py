"""`modelseal vault ...`: the argument parsers of the key service's commands.

The server side (init, serve, status, unseal, audit verify) is in vault_server, the REST API commands
in vault_admin. The vault modules are imported inside the commands: the core CLI must start without
the `vault` extra installed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._common import AddParser, size
from .vault_admin import (
    cmd_datakey,
    cmd_device_create,
    cmd_device_enroll,
    cmd_device_list,
    cmd_device_read,
    cmd_device_revoke,
    cmd_device_rotate,
    cmd_device_unlock,
    cmd_key_config,
    cmd_key_create,
    cmd_key_export,
    cmd_key_list,
    cmd_key_read,
    cmd_key_rotate,
    cmd_licence_create,
    cmd_licence_read,
    cmd_model_download,
    cmd_model_list,
    cmd_model_show,
    cmd_model_upload,
    cmd_policy_create,
    cmd_policy_list,
    cmd_policy_read,
    cmd_token_create,
    cmd_token_list,
    cmd_token_revoke,
)
from .vault_server import (
    cmd_audit_verify,
    cmd_init,
    cmd_seal_vault,
    cmd_serve,
    cmd_status,
    cmd_unseal,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_LISTEN = "127.0.0.1:8180"


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


def api(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of a command that talks to the REST API."""
    p.add_argument("--vault", metavar="URL", help="vault address (env MODELSEAL_VAULT_ADDR)")
    p.add_argument(
        "--token-file", metavar="F", help="file holding the token (env MODELSEAL_VAULT_TOKEN_FILE)"
    )
    p.add_argument(
        "--ca", metavar="CA.pem", help="CA to trust, e.g. DIR/tls/ca.pem (env MODELSEAL_VAULT_CA)"
    )
    return p


def data(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of a command that works on the data folder itself."""
    p.add_argument("--data", required=True, metavar="DIR", help="the vault's data folder")
    p.add_argument("--database", metavar="URL", help="SQLAlchemy URL (default: SQLite in DIR)")
    return p


def _server_commands(groups: Subcommands) -> None:
    """init, serve, status, seal, unseal: the vault process and its data folder."""
    p = data(
        leaf(
            groups,
            "init",
            "create a vault: root key, database, TLS certificates, first admin token",
            "modelseal vault init --data ./vault",
        )
    )
    p.add_argument(
        "--root",
        choices=("key-file", "shamir", "pkcs11"),
        default="key-file",
        help="root of trust (default key-file)",
    )
    shamir_flags = p.add_argument_group("--root shamir (the vault starts sealed; `vault unseal` opens it)")
    shamir_flags.add_argument("--shares", type=int, metavar="N", help="how many shares to make (e.g. 5)")
    shamir_flags.add_argument("--threshold", type=int, metavar="K", help="how many unseal the vault (e.g. 3)")
    shamir_flags.add_argument(
        "--share-dir", metavar="D", help="folder for the share files (share-1.txt ..., 0600), written once"
    )
    token_flags = p.add_argument_group("--root pkcs11 (the root is encrypted by a key kept in the token)")
    token_flags.add_argument("--module", metavar="SO", help="e.g. /usr/lib/softhsm/libsofthsm2.so")
    token_flags.add_argument("--token", metavar="LABEL", help="the token's label")
    token_flags.add_argument("--pin-file", metavar="F", help="user PIN file (0600); serve reads it too")
    token_flags.add_argument("--key-label", metavar="L", help="label of the AES key made in the token")
    p.set_defaults(func=cmd_init)

    p = data(
        leaf(
            groups,
            "serve",
            "run the vault API (TLS with DIR's certificates)",
            "modelseal vault serve --data ./vault --listen 127.0.0.1:8180",
        )
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN}")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP without TLS: for tests only, never deploy",
    )
    p.add_argument(
        "--models-dir",
        metavar="DIR",
        help="the model repository's files (default DATA/models; one shared folder for replicas)",
    )
    p.add_argument(
        "--max-model-size",
        type=size,
        metavar="SIZE",
        help="largest model upload accepted, bytes or with K/M/G/T (default 64G)",
    )
    # Key-release capacity (vault/server/admission.py, group_commit.py); defaults are admission.DEFAULT_*.
    p.add_argument(
        "--max-inflight",
        type=int,
        default=256,
        metavar="N",
        help="key releases in flight at once; past it 429 + Retry-After at once (default 256)",
    )
    p.add_argument(
        "--max-commit-queue",
        type=int,
        default=128,
        metavar="N",
        help="releases waiting for the group commit (the storage is behind); past it 503 + Retry-After "
        "(default 128)",
    )
    p.add_argument(
        "--commit-window",
        type=float,
        default=1.0,
        metavar="MS",
        help="milliseconds the release writer waits for more releases to commit together, 0-100 "
        "(default 1; 0: whatever queued while the previous commit ran)",
    )
    p.add_argument(
        "--no-group-commit",
        action="store_true",
        help="commit each key release in its own transaction (slower; for comparison)",
    )
    # Service features (issue 4): export, metrics, client certificates.
    p.add_argument(
        "--allow-export",
        action="store_true",
        help="allow admins to export master keys HPKE-sealed to a guard key (off by default; audited)",
    )
    p.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve /v1/sys/metrics without a token (default: admin or auditor token)",
    )
    p.add_argument(
        "--client-ca",
        metavar="CA.pem",
        help="ask clients for a certificate signed by this CA; a presented one must verify",
    )
    p.add_argument(
        "--client-cert-required",
        action="store_true",
        help="with --client-ca: refuse TLS connections without a valid client certificate",
    )
    p.set_defaults(func=cmd_serve, own_signals=True)

    p = api(
        leaf(
            groups,
            "status",
            "show liveness and readiness (exit 15 when not ready)",
            "modelseal vault status --vault https://127.0.0.1:8180 --ca ./vault/tls/ca.pem",
        )
    )
    p.set_defaults(func=cmd_status)

    p = api(
        leaf(
            groups,
            "seal",
            "seal the running vault (admin): key routes answer 503 until restart",
            "modelseal vault seal --token-file admin.token",
        )
    )
    p.set_defaults(func=cmd_seal_vault)

    p = api(
        leaf(
            groups,
            "unseal",
            "give one Shamir share to a sealed vault (no token); prompts when no --share-file",
            "modelseal vault unseal --vault https://127.0.0.1:8180 --ca ca.pem --share-file share-2.txt",
        )
    )
    p.add_argument("--share-file", metavar="F", help="file holding one share (else a hidden prompt)")
    p.set_defaults(func=cmd_unseal)


def _audit_commands(groups: Subcommands) -> None:
    """audit verify: the hash chain in the database."""
    audit = leaf(groups, "audit", "the audit trail", "modelseal vault audit verify --data ./vault")
    audits = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    p = data(
        leaf(
            audits,
            "verify",
            "check the audit hash chain in the database; names the first bad record",
            "modelseal vault audit verify --data ./vault",
        )
    )
    p.set_defaults(func=cmd_audit_verify)


def _key_commands(groups: Subcommands) -> None:
    """key create|read|rotate|list|config|export, and datakey."""
    key = leaf(groups, "key", "manage master keys", "modelseal vault key create models-2026")
    keys = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    for name, help_text, func in (
        ("create", "create a master key (aes256-gcm)", cmd_key_create),
        ("read", "show a key's metadata (never its material)", cmd_key_read),
        ("rotate", "add a new version; old versions keep unwrapping", cmd_key_rotate),
    ):
        p = api(leaf(keys, name, help_text, f"modelseal vault key {name} models-2026"))
        p.add_argument("name")
        if name == "create":
            p.add_argument("--type", default="aes256-gcm", choices=("aes256-gcm",))
        p.set_defaults(func=func)
    p = api(leaf(keys, "list", "list the key names of your domain", "modelseal vault key list"))
    p.set_defaults(func=cmd_key_list)
    p = api(
        leaf(
            keys,
            "config",
            "set min_decryption_version, disable or enable a key",
            "modelseal vault key config models-2026 --min-decryption-version 2",
        )
    )
    p.add_argument("name")
    p.add_argument("--min-decryption-version", type=int, metavar="N")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--disable", dest="disabled", action="store_const", const=True, default=None)
    state.add_argument("--enable", dest="disabled", action="store_const", const=False)
    p.set_defaults(func=cmd_key_config)
    p = api(
        leaf(
            keys,
            "export",
            "export every version of a key HPKE-sealed to a guard key (admin; needs serve --allow-export)",
            "modelseal vault key export models-2026 --guard-pub guard.pub -o models-2026.export",
        )
    )
    p.add_argument("name")
    p.add_argument(
        "--guard-pub",
        required=True,
        metavar="G.pub",
        help="the guard's ms-x25519: recipient (as `modelseal identity` prints), or a file holding it",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="bundle file to write (0600)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_key_export)

    p = api(
        leaf(
            groups,
            "datakey",
            "a new MEK wrapped under a master key's latest version",
            "modelseal vault datakey models-2026 --mek-out MEK.dat",
        )
    )
    p.add_argument("name")
    p.add_argument("--mek-out", metavar="FILE", help="also write the plaintext MEK here (0600; audited)")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing --mek-out file")
    p.set_defaults(func=cmd_datakey)


def _token_commands(groups: Subcommands) -> None:
    """token create|list|revoke."""
    token = leaf(
        groups, "token", "manage API tokens", "modelseal vault token create --role operator -o op.token"
    )
    tokens = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    p = api(
        leaf(
            tokens,
            "create",
            "create a token (admin); it is shown once",
            "modelseal vault token create --role operator -o op.token",
        )
    )
    p.add_argument("--role", required=True, choices=("admin", "operator", "auditor"))
    p.add_argument("--name", default="", help="a label for the audit trail")
    p.add_argument("-o", "--output", metavar="FILE", help="write the token to FILE (0600) instead of stdout")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing FILE")
    p.add_argument("--json", action="store_true", help="also print accessor, role and domain as JSON")
    p.set_defaults(func=cmd_token_create)
    p = api(
        leaf(
            tokens,
            "list",
            "list your domain's tokens (admin, auditor): accessor, role, name, created, last used",
            "modelseal vault token list",
        )
    )
    p.set_defaults(func=cmd_token_list)
    p = api(
        leaf(
            tokens,
            "revoke",
            "revoke a token by its accessor (admin); refused from the commit on",
            "modelseal vault token revoke 3f2a9c0d1e8b7a64",
        )
    )
    p.add_argument("accessor", metavar="ACCESSOR", help="16 hex digits, from `token list` (not the token)")
    p.set_defaults(func=cmd_token_revoke)


def _device_commands(groups: Subcommands) -> None:
    """device create|rotate-psk|read|revoke|unlock|list|enroll."""
    device = leaf(
        groups,
        "device",
        "manage devices and their pre-shared keys",
        "modelseal vault device create cam-17 --group edge --psk-out cam-17.psk",
    )
    device_cmds = device.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    for name, help_text, func in (
        ("create", "create a device; its new PSK goes to --psk-out (0600)", cmd_device_create),
        ("rotate-psk", "give a device a new PSK; the old one stops working", cmd_device_rotate),
    ):
        p = api(leaf(device_cmds, name, help_text, f"modelseal vault device {name} cam-17 --psk-out F"))
        p.add_argument("name")
        if name == "create":
            p.add_argument("--group", action="append", metavar="G", help="a group; repeatable")
        p.add_argument(
            "--psk-out", required=True, metavar="F", help="new file for the PSK (0600); `-` prints it"
        )
        p.add_argument("-f", "--force", action="store_true", help="replace an existing PSK file")
        p.set_defaults(func=func)
    for name, help_text, func in (
        ("read", "show a device's metadata (never its PSK)", cmd_device_read),
        ("revoke", "revoke a device: its next key release fails", cmd_device_revoke),
        ("unlock", "clear a device's lockout (failed PSK proofs)", cmd_device_unlock),
    ):
        p = api(leaf(device_cmds, name, help_text, f"modelseal vault device {name} cam-17"))
        p.add_argument("name")
        p.set_defaults(func=func)
    p = api(leaf(device_cmds, "list", "list the devices of your domain", "modelseal vault device list"))
    p.set_defaults(func=cmd_device_list)
    p = api(
        leaf(
            device_cmds,
            "enroll",
            "enrol a device's card identity key for attestation-based key release",
            "modelseal vault device enroll cam-17 --device-pub dev0.pub --measurement HEX",
        )
    )
    p.add_argument("name")
    p.add_argument(
        "--device-pub", required=True, metavar="DEV.pub", help="the card's Ed25519 identity public key"
    )
    p.add_argument("--measurement", metavar="HEX", help="require reports to carry this software measurement")
    p.set_defaults(func=cmd_device_enroll)


def _policy_commands(groups: Subcommands) -> None:
    """policy create|read|list, and licence create|read."""
    policy = leaf(
        groups,
        "policy",
        "which devices may get a master key's data keys (default deny)",
        "modelseal vault policy create cams --key models-2026 --group edge",
    )
    policy_cmds = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    p = api(
        leaf(
            policy_cmds,
            "create",
            "create or replace a policy",
            "modelseal vault policy create cams --key models-2026 --group edge",
        )
    )
    p.add_argument("name")
    p.add_argument("--key", required=True, metavar="K", help="the master key this policy releases")
    p.add_argument("--device", action="append", metavar="D", help="a device; repeatable")
    p.add_argument("--group", action="append", metavar="G", help="a device group; repeatable")
    p.set_defaults(func=cmd_policy_create)
    p = api(leaf(policy_cmds, "read", "show a policy", "modelseal vault policy read cams"))
    p.add_argument("name")
    p.set_defaults(func=cmd_policy_read)
    p = api(leaf(policy_cmds, "list", "list the policies of your domain", "modelseal vault policy list"))
    p.set_defaults(func=cmd_policy_list)

    licence = leaf(
        groups,
        "licence",
        "limits on a policy's releases: not-after, max uses, max devices",
        "modelseal vault licence create cams-2026 --policy cams --not-after 2026-12-31T23:59:59Z",
    )
    licence_cmds = licence.add_subparsers(dest="licence_command", required=True, metavar="COMMAND")
    p = api(
        leaf(
            licence_cmds,
            "create",
            "attach a licence to a policy (every licence of a policy must allow a release)",
            "modelseal vault licence create cams-2026 --policy cams --max-uses 1000 --max-devices 10",
        )
    )
    p.add_argument("name")
    p.add_argument("--policy", required=True, metavar="P")
    p.add_argument("--not-after", metavar="ISO", help="UTC time after which nothing is released")
    p.add_argument("--max-uses", type=int, metavar="N", help="releases allowed in total")
    p.add_argument("--max-devices", type=int, metavar="N", help="distinct devices that may ever get it")
    p.set_defaults(func=cmd_licence_create)
    p = api(
        leaf(licence_cmds, "read", "show a licence and its counters", "modelseal vault licence read cams")
    )
    p.add_argument("name")
    p.set_defaults(func=cmd_licence_read)


def _model_commands(groups: Subcommands) -> None:
    """model upload|list|show|download: the repository of sealed files."""
    model = leaf(
        groups,
        "model",
        "the model repository: sealed files devices download (by policy on their vault keys)",
        "modelseal vault model upload model.mseal --id resnet50",
    )
    model_cmds = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    p = api(
        leaf(
            model_cmds,
            "upload",
            "upload a sealed model file (admin, operator); it is streamed, never held in memory",
            "modelseal vault model upload model.mseal --id resnet50",
        )
    )
    p.add_argument("file", metavar="FILE", help="a sealed model (.mseal)")
    p.add_argument("--id", required=True, metavar="ID", help="the model's id in the repository")
    p.add_argument("--replace", action="store_true", help="overwrite an existing model of that id")
    p.set_defaults(func=cmd_model_upload)
    p = api(leaf(model_cmds, "list", "list the models of your domain", "modelseal vault model list"))
    p.set_defaults(func=cmd_model_list)
    p = api(
        leaf(
            model_cmds,
            "show",
            "show a model's metadata (size, SHA-256, vault keys)",
            "modelseal vault model show resnet50",
        )
    )
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=cmd_model_show)
    p = api(
        leaf(
            model_cmds,
            "download",
            "download a model (admin, operator), checked against its SHA-256, written atomically",
            "modelseal vault model download resnet50 -o resnet50.mseal",
        )
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_model_download)


def add_commands(add: AddParser) -> None:
    """Register `vault ...` under a `vault` command made with main's ``add``."""
    top = add(
        "vault",
        "the key service: keys, devices, policies, licences, tokens, audit (needs the `vault` extra)",
        "modelseal vault init --data /var/lib/modelseal-vault",
    )
    groups = top.add_subparsers(dest="vault_command", required=True, metavar="COMMAND")
    for commands in (
        _server_commands,
        _key_commands,
        _token_commands,
        _device_commands,
        _policy_commands,
        _model_commands,
        _audit_commands,
    ):
        commands(groups)
