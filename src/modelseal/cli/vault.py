"""`modelseal vault ...`: run the key service and talk to it (argparse wiring only).

The server side (init, serve, audit verify) works on a data folder; everything else goes through
the REST API with a token read from a file (--token-file or MODELSEAL_VAULT_TOKEN_FILE), never from
argv. The vault modules are imported inside the commands: the core CLI must start without the
`vault` extra installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import modelseal
from modelseal import Identity

from .main import AddParser, CliError

if TYPE_CHECKING:
    from modelseal.vault.client import VaultClient
    from modelseal.vault.recipient import VaultRecipient

DEFAULT_LISTEN = "127.0.0.1:8180"


def _need_extra() -> None:
    try:
        import httpx  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as e:
        raise modelseal.RuntimeUnavailableError(e.name or "the vault dependencies", "vault") from None


def _client(args: argparse.Namespace, token_required: bool = True) -> VaultClient:
    _need_extra()
    from modelseal.vault.client import VaultClient

    return VaultClient.from_settings(args.vault, args.token_file, args.ca, token_required=token_required)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def seal_recipient(args: argparse.Namespace) -> VaultRecipient:
    """For `modelseal seal --vault-key`: a fresh data key from the vault, as MEK + stanza."""
    _need_extra()
    from modelseal.vault.client import VaultClient
    from modelseal.vault.recipient import VaultRecipient

    with VaultClient.from_settings(args.vault, args.vault_token_file, args.vault_ca) as client:
        return VaultRecipient.prepare(client, args.vault_key)


def vault_identity(args: argparse.Namespace) -> Identity:
    """For unseal/verify/rewrap --vault: the vault unwraps `vault` stanzas (its token decides).

    With --device and --psk-file it is a device instead: key release with a PSK proof, no token.
    """
    _need_extra()
    from modelseal.vault.client import VaultClient

    device, psk_file = getattr(args, "device", None), getattr(args, "psk_file", None)
    agent = getattr(args, "agent", None)
    if device or psk_file or agent:
        from modelseal.vault.device_identity import DeviceIdentity

        if not psk_file:
            raise CliError("a device needs its --psk-file (with --agent unix:PATH or --vault URL)")
        if agent and args.vault:
            raise CliError("give --agent or --vault, not both: a device talks to one of them")
        client = VaultClient.from_settings(agent or args.vault, None, args.vault_ca, token_required=False)
        return DeviceIdentity.from_psk_file(client, psk_file, device=device)

    from modelseal.vault.recipient import VaultIdentity

    return VaultIdentity(VaultClient.from_settings(args.vault, args.vault_token_file, args.vault_ca))


def _size(text: str) -> int:
    from modelseal.vault.models import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--listen takes HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


# --- commands -----------------------------------------------------------------------------------


def _root_options(args: argparse.Namespace) -> tuple[Any, Any]:
    """(ShamirOptions | None, Pkcs11Options | None) from init's flags; each set belongs to one root."""
    from modelseal.vault.pkcs11_root import Pkcs11Options
    from modelseal.vault.shamir_root import ShamirOptions

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
    _need_extra()
    from modelseal.vault import datadir

    shamir, pkcs11 = _root_options(args)
    token = datadir.init(args.data, args.root, args.database, shamir=shamir, pkcs11=pkcs11)
    root = {
        "key-file": f"root key ({args.data}/{datadir.ROOT_FILE})",
        "shamir": f"root split into {args.shares} shares in {args.share_dir} (any {args.threshold} "
        "unseal it: hand each to its keeper, then delete it there; the vault starts sealed)",
        "pkcs11": f"root encrypted by a non-extractable key in PKCS#11 token {args.token!r}",
    }[args.root]
    print(
        f"initialised a vault in {args.data}: {root}, database, TLS CA ({args.data}/tls/ca.pem); "
        f"the first admin token is in {args.data}/{datadir.TOKEN_FILE} and below (shown once):",
        file=sys.stderr,
    )
    print(token)


def cmd_serve(args: argparse.Namespace) -> None:
    _need_extra()
    from modelseal.vault import datadir

    host, port = _listen(args.listen)
    # The --insecure-http warning is a JSON log line of serve's, like everything it writes.
    datadir.serve(
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
    from modelseal.vault.overload import ReleaseSettings

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

    with _client(args, token_required=False) as client:
        health = client.health()
        try:
            ready = client.ready()
        except Unavailable as e:
            ready = {"status": "not ready", "reason": e.code}
    _print({"health": health, "ready": ready})
    return 0 if ready.get("status") == "ready" else 15


def cmd_seal_vault(args: argparse.Namespace) -> None:
    with _client(args) as client:
        client.seal_vault()
    print(
        "the vault is sealed: key routes answer 503 until it is restarted "
        "(a Shamir vault: until `modelseal vault unseal` got the threshold of shares again)",
        file=sys.stderr,
    )


def cmd_unseal(args: argparse.Namespace) -> None:
    _need_extra()
    from modelseal.vault.shamir_root import parse_share, read_share_file

    if args.share_file:
        share = read_share_file(args.share_file)
    else:
        import getpass

        try:
            share = getpass.getpass("unseal share (input hidden): ").strip()
        except EOFError:
            raise CliError("no share given: type it at the prompt or use --share-file F") from None
    parse_share(share)  # a typo fails here, before it reaches the vault or its rate limit
    with _client(args, token_required=False) as client:
        answer = client.unseal(share)
    if answer.get("sealed") is False:
        print("the vault is unsealed", file=sys.stderr)
    else:
        print(
            f"share accepted: {answer.get('progress')} of {answer.get('threshold')}; the vault stays sealed "
            "until the threshold is reached",
            file=sys.stderr,
        )
    _print(answer)


def cmd_key_create(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.create_key(args.name, args.type))


def cmd_key_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print({"keys": client.list_keys()})


def cmd_key_read(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.read_key(args.name))


def cmd_key_rotate(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.rotate_key(args.name))


def cmd_key_config(args: argparse.Namespace) -> None:
    if args.min_decryption_version is None and args.disabled is None:
        raise CliError("nothing to change: give --min-decryption-version N, --disable or --enable")
    with _client(args) as client:
        _print(
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
    with _client(args) as client:
        if args.mek_out is None:
            answer = client.datakey(args.name)
        else:
            # Opened first: the plaintext data key is an audited release, not to be made for nothing.
            with atomic_output(args.mek_out, 0o600, overwrite=args.force) as f:
                answer = client.datakey(args.name, plaintext=True)
                assert answer.plaintext is not None
                f.write(answer.plaintext)
    _print(
        {
            "key_name": answer.key_name,
            "key_version": answer.key_version,
            "wrapped": base64.b64encode(answer.wrapped).decode(),
        }
    )


def cmd_token_create(args: argparse.Namespace) -> None:
    with _client(args) as client:
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
        _print(answer)


def cmd_token_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print({"tokens": client.list_tokens()})


def cmd_token_revoke(args: argparse.Namespace) -> None:
    if args.accessor.startswith("msv."):
        # Someone pasted the token itself: refuse before it travels anywhere (and don't echo it).
        raise CliError("that is a token, not its accessor: `modelseal vault token list` shows accessors")
    with _client(args) as client:
        _print(client.revoke_token(args.accessor))


def cmd_key_export(args: argparse.Namespace) -> None:
    from modelseal.fileio import atomic_output
    from modelseal.keyfiles import parse_recipient, x25519_recipient_string
    from modelseal.vault.export import guard_fingerprint, parse_bundle

    guard = parse_recipient(args.guard_pub)  # the text form, or a file holding it (or PEM)
    if not args.force and Path(args.output).exists():
        # Checked before asking: an export is an audited event, not to be made for nothing.
        raise modelseal.OutputError(f"{args.output} exists (give --force to replace it)")
    with _client(args) as client:
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
    with _client(args) as client:

        def revoke(made: object) -> str:
            client.revoke_device(args.name)
            return f"device {args.name} was revoked, since nobody holds its PSK"

        _device_with_psk(args, lambda: client.create_device(args.name, args.group or []), revoke)


def cmd_device_rotate(args: argparse.Namespace) -> None:
    with _client(args) as client:

        def explain(made: object) -> str:
            # Nobody holds the new PSK, so the device is as good as locked: rotating again mends it.
            return f"device {args.name}'s PSK was rotated but not kept: rotate it again"

        _device_with_psk(args, lambda: client.rotate_psk(args.name), explain)


def cmd_device_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print({"devices": client.list_devices()})


def cmd_device_read(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.read_device(args.name))


def cmd_device_revoke(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.revoke_device(args.name))


def cmd_device_unlock(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.unlock_device(args.name))


def cmd_device_enroll(args: argparse.Namespace) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    # DEV.pub is what `modelseal signer` writes for a card (`modelseal device verify` reads it too).
    public = modelseal.load_signer_public(args.device_pub).public_bytes(Encoding.Raw, PublicFormat.Raw)
    measurement = None
    if args.measurement:
        from modelseal.device.measurement import parse_measurement

        measurement = parse_measurement(args.measurement)
    with _client(args) as client:
        _print(client.enroll_device(args.name, public, measurement))


def cmd_policy_create(args: argparse.Namespace) -> None:
    if not args.device and not args.group:
        raise CliError("a policy names at least one --device or --group (default deny otherwise)")
    with _client(args) as client:
        _print(client.put_policy(args.name, args.key, devices=args.device or [], groups=args.group or []))


def cmd_policy_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print({"policies": client.list_policies()})


def cmd_policy_read(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.read_policy(args.name))


def cmd_licence_create(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(
            client.create_licence(
                args.name,
                args.policy,
                not_after=args.not_after,
                max_uses=args.max_uses,
                max_devices=args.max_devices,
            )
        )


def cmd_licence_read(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.read_licence(args.name))


# --- model repository (vault model ...) ----------------------------------------------------------


def cmd_model_upload(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.upload_model(args.id, args.file, replace=args.replace))


def cmd_model_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print({"models": client.list_models()})


def cmd_model_show(args: argparse.Namespace) -> None:
    with _client(args) as client:
        _print(client.model_info(args.id))


def cmd_model_download(args: argparse.Namespace) -> None:
    if Path(args.output).exists() and not args.force:
        raise modelseal.OutputError(f"{args.output} exists (give --force to replace it)")
    with _client(args) as client:
        _print(client.download_model(args.id, args.output))


def cmd_audit_verify(args: argparse.Namespace) -> None:
    _need_extra()
    from modelseal.vault.datadir import DataDir
    from modelseal.vault.store import make_engine, sqlite_url, verify_audit

    DataDir(Path(args.data)).config()
    engine = make_engine(args.database or sqlite_url(args.data))
    try:
        count = verify_audit(engine)
    finally:
        engine.dispose()
    print(f"audit chain intact: {count} record(s)", file=sys.stderr)


# --- parser -------------------------------------------------------------------------------------


def add_commands(add: AddParser) -> None:
    """Register `vault ...` under a `vault` command made with main's ``add``."""
    top = add(
        "vault",
        "the key service: keys, devices, policies, licences, tokens, audit (needs the `vault` extra)",
        "modelseal vault init --data /var/lib/modelseal-vault",
    )
    groups = top.add_subparsers(dest="vault_command", required=True, metavar="COMMAND")

    def leaf(
        sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str, example: str
    ) -> argparse.ArgumentParser:
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
        p.add_argument("--vault", metavar="URL", help="vault address (env MODELSEAL_VAULT_ADDR)")
        p.add_argument(
            "--token-file", metavar="F", help="file holding the token (env MODELSEAL_VAULT_TOKEN_FILE)"
        )
        p.add_argument(
            "--ca", metavar="CA.pem", help="CA to trust, e.g. DIR/tls/ca.pem (env MODELSEAL_VAULT_CA)"
        )
        return p

    def data(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data", required=True, metavar="DIR", help="the vault's data folder")
        p.add_argument("--database", metavar="URL", help="SQLAlchemy URL (default: SQLite in DIR)")
        return p

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
        type=_size,
        metavar="SIZE",
        help="largest model upload accepted, bytes or with K/M/G/T (default 64G)",
    )
    # Key-release capacity (overload.py, group_commit.py); defaults are overload.DEFAULT_*.
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
