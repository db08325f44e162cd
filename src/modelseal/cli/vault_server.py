"""`vault init|serve|status|seal|unseal|audit verify`: the key service's own process and data folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import (
    CliError,
    api_flags,
    connection_flags,
    connection_limits,
    data_flags,
    leaf,
    print_json,
    require_vault_extra,
    size,
)
from .vault_admin import client_of

if TYPE_CHECKING:
    from ._common import Subcommands

DEFAULT_LISTEN = "127.0.0.1:8180"


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--listen takes HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _root_options(args: argparse.Namespace) -> tuple[Any, Any]:
    """(ShamirOptions | None, Pkcs11Options | None) from init's flags; each set belongs to one root."""
    from modelseal.vault.server import Pkcs11Options, ShamirOptions

    shamir = {"--shares": args.shares, "--threshold": args.threshold, "--share-dir": args.share_dir}
    pkcs11 = {"--module": args.module, "--token": args.token, "--pin-file": args.pin_file}
    for root, given in (("shamir", shamir), ("pkcs11", {**pkcs11, "--key-label": args.key_label})):
        stray = [name for name, value in given.items() if value is not None]
        if stray and args.root != root:
            raise CliError(f"{', '.join(stray)}: only with --root {root}")
    needed = {"shamir": shamir, "pkcs11": pkcs11}.get(args.root, {})
    missing = [name for name, value in needed.items() if value is None]
    if missing:
        raise CliError(f"--root {args.root} needs {', '.join(missing)}")
    if args.root == "shamir":
        return ShamirOptions(args.shares, args.threshold, Path(args.share_dir)), None
    if args.root == "pkcs11":
        return None, Pkcs11Options(args.module, args.token, Path(args.pin_file), args.key_label)
    return None, None


def cmd_init(args: argparse.Namespace) -> None:
    require_vault_extra()
    from modelseal.vault import server

    shamir, pkcs11 = _root_options(args)
    token = server.init(args.data, args.root, args.database, shamir=shamir, pkcs11=pkcs11)
    root = {
        "key-file": f"root key ({args.data}/{server.ROOT_FILE})",
        "shamir": f"root split into {args.shares} shares in {args.share_dir} (any {args.threshold} "
        "unseal it: hand each to its keeper, then delete it there; the vault starts sealed)",
        "pkcs11": f"root encrypted by a non-extractable key in PKCS#11 token {args.token!r}",
    }[args.root]
    print(
        f"initialised a vault in {args.data}: {root}, database, TLS CA ({args.data}/tls/ca.pem); "
        f"the first admin token is in {args.data}/{server.TOKEN_FILE} and below (shown once):",
        file=sys.stderr,
    )
    print(token)


def cmd_serve(args: argparse.Namespace) -> None:
    require_vault_extra()
    from modelseal.vault import server

    host, port = _listen(args.listen)
    # The --insecure-http warning is a JSON log line of serve's, like everything it writes.
    server.serve(
        args.data,
        host,
        port,
        database_url=args.database,
        insecure_http=args.insecure_http,
        models_dir=args.models_dir,
        max_model_size=args.max_model_size,
        release_settings=_release_settings(args),
        allow_export=args.allow_export,
        metrics_public=args.metrics_public,
        client_ca=args.client_ca,
        client_cert_required=args.client_cert_required,
        sqlite_shared=args.sqlite_shared,
        limits=connection_limits(args),
    )


def _release_settings(args: argparse.Namespace) -> Any:
    """serve's key-release capacity flags (overload.ReleaseSettings); bad values are usage errors."""
    from modelseal.vault.server import ReleaseSettings

    try:
        return ReleaseSettings(
            max_inflight=args.max_inflight,
            max_commit_queue=args.max_commit_queue,
            group_commit=not args.no_group_commit,
            commit_window=args.commit_window / 1000,
        )
    except ValueError as e:
        raise CliError(str(e)) from None


def cmd_status(args: argparse.Namespace) -> int:
    from modelseal.vault.errors import Unavailable

    with client_of(args, token_required=False) as client:
        health = client.health()
        try:
            ready = client.ready()
        except Unavailable as e:
            ready = {"status": "not ready", "reason": e.code}
    print_json({"health": health, "ready": ready})
    return 0 if ready.get("status") == "ready" else 15


def cmd_seal_vault(args: argparse.Namespace) -> None:
    with client_of(args) as client:
        client.seal_vault()
    print(
        "the vault is sealed: key routes answer 503 until it is restarted "
        "(a Shamir vault: until `modelseal vault unseal` got the threshold of shares again)",
        file=sys.stderr,
    )


def cmd_unseal(args: argparse.Namespace) -> None:
    require_vault_extra()
    from modelseal.vault.server import parse_share, read_share_file

    if args.share_file:
        share = read_share_file(args.share_file)
    else:
        import getpass

        try:
            share = getpass.getpass("unseal share (input hidden): ").strip()
        except EOFError:
            raise CliError("no share given: type it at the prompt or use --share-file F") from None
    parse_share(share)  # a typo fails here, before it reaches the vault or its rate limit
    with client_of(args, token_required=False) as client:
        answer = client.unseal(share)
    if answer.get("sealed") is False:
        print("the vault is unsealed", file=sys.stderr)
    else:
        print(
            f"share accepted: {answer.get('progress')} of {answer.get('threshold')}; the vault stays sealed "
            "until the threshold is reached",
            file=sys.stderr,
        )
    print_json(answer)


def cmd_audit_verify(args: argparse.Namespace) -> None:
    require_vault_extra()
    from modelseal.vault.server import verify_audit

    status = verify_audit(args.data, args.database)
    if status.anchored is None:
        anchor = "the anchor was not checked (a Shamir root stays sealed offline; it is checked at unseal)"
    else:
        anchor = f"the database still holds the anchored head (record {status.anchored})"
    print(f"audit chain intact: {status.records} record(s); {anchor}", file=sys.stderr)


def cmd_audit_anchor(args: argparse.Namespace) -> None:
    require_vault_extra()
    from modelseal.vault.server import anchor_audit

    seq = anchor_audit(args.data, args.database)
    print(f"audit chain intact; anchored its head, record {seq} (it names the old anchor)", file=sys.stderr)


def add_server_commands(groups: Subcommands) -> None:
    """init, serve, status, seal, unseal: the vault process and its data folder."""
    p = data_flags(
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

    p = data_flags(
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
    # Service features: export, metrics, client certificates.
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
    p.add_argument(
        "--sqlite-shared",
        action="store_true",
        help="let other processes open the SQLite file while the vault runs (inspection tools); by "
        "default the vault holds it alone and keeps the WAL index in memory, so a truncated or "
        "read-only file cannot crash it",
    )
    connection_flags(p)
    p.set_defaults(func=cmd_serve, own_signals=True)

    p = api_flags(
        leaf(
            groups,
            "status",
            "show liveness and readiness (exit 15 when not ready)",
            "modelseal vault status --vault https://127.0.0.1:8180 --ca ./vault/tls/ca.pem",
        )
    )
    p.set_defaults(func=cmd_status)

    p = api_flags(
        leaf(
            groups,
            "seal",
            "seal the running vault (admin): key routes answer 503 until restart",
            "modelseal vault seal --token-file admin.token",
        )
    )
    p.set_defaults(func=cmd_seal_vault)

    p = api_flags(
        leaf(
            groups,
            "unseal",
            "give one Shamir share to a sealed vault (no token); prompts when no --share-file",
            "modelseal vault unseal --vault https://127.0.0.1:8180 --ca ca.pem --share-file share-2.txt",
        )
    )
    p.add_argument("--share-file", metavar="F", help="file holding one share (else a hidden prompt)")
    p.set_defaults(func=cmd_unseal)


def add_audit_commands(groups: Subcommands) -> None:
    """audit verify|anchor: the hash chain in the database, and its head kept outside it."""
    audit = leaf(groups, "audit", "the audit trail", "modelseal vault audit verify --data ./vault")
    audits = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    p = data_flags(
        leaf(
            audits,
            "verify",
            "check the audit hash chain in the database, and that it still holds the head this "
            "vault anchored (records cut off or an older copy are refused); names the first bad record",
            "modelseal vault audit verify --data ./vault",
        )
    )
    p.set_defaults(func=cmd_audit_verify)
    p = data_flags(
        leaf(
            audits,
            "anchor",
            "accept the database's current audit head as this vault's (after restoring a backup on "
            "purpose, or for a vault made before anchors): checks the chain first; audited",
            "modelseal vault audit anchor --data ./vault",
        )
    )
    p.set_defaults(func=cmd_audit_anchor)
