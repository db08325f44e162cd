"""`modelseal vault ...`: the argument parsers of the key service's commands.

The server side's parsers and commands (init, serve, status, seal, unseal, audit verify) are in
vault_server; here are the REST API commands' parsers (their commands are in vault_admin). The
vault modules are imported inside the commands: the core CLI must start without the `vault` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._common import AddParser, api_flags, leaf
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
from .vault_server import add_audit_commands, add_server_commands

if TYPE_CHECKING:
    from ._common import Subcommands


def _key_commands(groups: Subcommands) -> None:
    """key create|read|rotate|list|config|export, and datakey."""
    key = leaf(groups, "key", "manage master keys", "modelseal vault key create models-2026")
    keys = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    for name, help_text, func in (
        ("create", "create a master key (aes256-gcm)", cmd_key_create),
        ("read", "show a key's metadata (never its material)", cmd_key_read),
        ("rotate", "add a new version; old versions keep unwrapping", cmd_key_rotate),
    ):
        p = api_flags(leaf(keys, name, help_text, f"modelseal vault key {name} models-2026"))
        p.add_argument("name")
        if name == "create":
            p.add_argument("--type", default="aes256-gcm", choices=("aes256-gcm",))
        p.set_defaults(func=func)
    p = api_flags(leaf(keys, "list", "list the key names of your domain", "modelseal vault key list"))
    p.set_defaults(func=cmd_key_list)
    p = api_flags(
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
    p = api_flags(
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

    p = api_flags(
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
    p = api_flags(
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
    p = api_flags(
        leaf(
            tokens,
            "list",
            "list your domain's tokens (admin, auditor): accessor, role, name, created, last used",
            "modelseal vault token list",
        )
    )
    p.set_defaults(func=cmd_token_list)
    p = api_flags(
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
        p = api_flags(leaf(device_cmds, name, help_text, f"modelseal vault device {name} cam-17 --psk-out F"))
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
        p = api_flags(leaf(device_cmds, name, help_text, f"modelseal vault device {name} cam-17"))
        p.add_argument("name")
        p.set_defaults(func=func)
    p = api_flags(leaf(device_cmds, "list", "list the devices of your domain", "modelseal vault device list"))
    p.set_defaults(func=cmd_device_list)
    p = api_flags(
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
    p = api_flags(
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
    p = api_flags(leaf(policy_cmds, "read", "show a policy", "modelseal vault policy read cams"))
    p.add_argument("name")
    p.set_defaults(func=cmd_policy_read)
    p = api_flags(
        leaf(policy_cmds, "list", "list the policies of your domain", "modelseal vault policy list")
    )
    p.set_defaults(func=cmd_policy_list)

    licence = leaf(
        groups,
        "licence",
        "limits on a policy's releases: not-after, max uses, max devices",
        "modelseal vault licence create cams-2026 --policy cams --not-after 2026-12-31T23:59:59Z",
    )
    licence_cmds = licence.add_subparsers(dest="licence_command", required=True, metavar="COMMAND")
    p = api_flags(
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
    p = api_flags(
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
    p = api_flags(
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
    p = api_flags(leaf(model_cmds, "list", "list the models of your domain", "modelseal vault model list"))
    p.set_defaults(func=cmd_model_list)
    p = api_flags(
        leaf(
            model_cmds,
            "show",
            "show a model's metadata (size, SHA-256, vault keys)",
            "modelseal vault model show resnet50",
        )
    )
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=cmd_model_show)
    p = api_flags(
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
        add_server_commands,
        _key_commands,
        _token_commands,
        _device_commands,
        _policy_commands,
        _model_commands,
        add_audit_commands,
    ):
        commands(groups)
