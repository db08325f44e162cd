"""`vault init|serve|status|seal|unseal|audit verify`: the key service's own process and data folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._common import CliError, print_json, require_vault_extra
from .vault_admin import client_of


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

    count = verify_audit(args.data, args.database)
    print(f"audit chain intact: {count} record(s)", file=sys.stderr)
